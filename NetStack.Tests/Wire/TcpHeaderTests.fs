module NetStack.Tests.TcpHeaderTests
