module NetStack.Tests.ChecksumTests
