module NetStack.Tests.Pcap
