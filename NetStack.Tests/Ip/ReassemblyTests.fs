module NetStack.Tests.ReassemblyTests
