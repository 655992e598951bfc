module NetStack.Bench.IpBench
