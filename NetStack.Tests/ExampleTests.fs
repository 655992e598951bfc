module NetStack.Tests.ExampleTests
