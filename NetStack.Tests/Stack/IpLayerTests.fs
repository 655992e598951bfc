module NetStack.Tests.Stack.IpLayerTests
