module NetStack.Bench.CodecBench
