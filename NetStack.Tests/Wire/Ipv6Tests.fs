module NetStack.Tests.Ipv6Tests
