module NetStack.Tests.UdpTests
