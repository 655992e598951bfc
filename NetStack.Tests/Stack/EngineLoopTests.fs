module NetStack.Tests.Stack.EngineLoopTests
