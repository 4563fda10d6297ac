// The test cluster's pod sandbox program (make cluster); no dependencies.
module local/cluster/pause

go 1.25.0
