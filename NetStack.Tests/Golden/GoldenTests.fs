module NetStack.Tests.GoldenTests
