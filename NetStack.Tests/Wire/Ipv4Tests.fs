module NetStack.Tests.Ipv4Tests
