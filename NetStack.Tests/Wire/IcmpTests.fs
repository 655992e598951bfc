module NetStack.Tests.IcmpTests
