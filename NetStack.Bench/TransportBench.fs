module NetStack.Bench.TransportBench
