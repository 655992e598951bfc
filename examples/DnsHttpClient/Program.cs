// NetStack's DNS stub resolver as a user sees it: a stack with NetStackOptions.DnsServers
// resolves names over its own UDP (TCP when an answer is truncated), and an HttpClient from
// CreateHttpClient() fetches by host name, connecting with Happy Eyeballs. The DNS server here
// is a tiny one on the kernel side of the link, written with NetStack.Core's DNS codec; any
// real server (dnsmasq, unbound, your network's) works the same way.
//
// Run it where creating a TUN device is allowed, e.g. in a throwaway network namespace:
//
//     dotnet build examples/DnsHttpClient -c Release
//     unshare --user --map-root-user --net dotnet examples/DnsHttpClient/bin/Release/net10.0/DnsHttpClient.dll
//
// It prints one line per step and exits 0 when every step worked, 1 otherwise.

using System.Net;
using System.Net.Sockets;
using System.Text;
using Microsoft.FSharp.Collections;
using NetStack;
using NetStack.Core.Wire;
using NetStack.Device;

// The point-to-point link: the kernel side is 10.132.0.1 / fd32::1 (and runs the DNS and web
// servers), the stack is 10.132.0.2 / fd32::2.
var kernel4 = IPAddress.Parse("10.132.0.1");
var kernel6 = IPAddress.Parse("fd32::1");
var options = new NetStackOptions
{
    TunName = "nsdnsexample%d",
    Address = IPAddress.Parse("10.132.0.2"),
    HostAddress = kernel4,
    Address6 = IPAddress.Parse("fd32::2"),
    HostAddress6 = kernel6,
    DnsServers = [kernel4],
};

using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
var ct = timeout.Token;

NetworkStack stack;
try
{
    stack = NetworkStack.Start(options);
}
catch (TunDeviceException e)
{
    Console.Error.WriteLine($"cannot bring the stack up: {e.Message}");
    return 1;
}

await using (stack)
{
    Console.WriteLine($"stack up: {stack}, DNS servers: {string.Join(", ", stack.DnsServers)}");

    // 1. A DNS server on the kernel side, UDP port 53: www.example.test has an A and an AAAA
    //    record, every other name under example.test does not exist.
    using var dns = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
    dns.Bind(new IPEndPoint(kernel4, 53));
    _ = Task.Run(async () =>
    {
        var buffer = new byte[512];
        while (!ct.IsCancellationRequested)
        {
            var received = await dns.ReceiveFromAsync(buffer, SocketFlags.None, new IPEndPoint(IPAddress.Any, 0), ct);
            var parsed = NetStack.Core.Wire.Dns.parse(buffer.AsSpan(0, received.ReceivedBytes));
            if (parsed.IsError || parsed.ResultValue.Questions.IsEmpty)
                continue;
            var query = parsed.ResultValue;
            var question = query.Questions.Head;
            Console.WriteLine($"kernel DNS server asked {question.Name} type {question.Type} from {received.RemoteEndPoint}");
            var answers = new List<DnsRecord>();
            bool known = NetStack.Core.Wire.Dns.namesEqual(question.Name, "www.example.test");
            if (known && question.Type == NetStack.Core.Wire.Dns.TypeA)
                answers.Add(new DnsRecord(question.Name, question.Type, 1, 60, DnsRecordData.NewA(Ipv4Address.OfIPAddress(kernel4))));
            if (known && question.Type == NetStack.Core.Wire.Dns.TypeAaaa)
                answers.Add(new DnsRecord(question.Name, question.Type, 1, 60, DnsRecordData.NewAaaa(Ipv6Address.OfIPAddress(kernel6))));
            // QR, RD, RA; RCODE 3 (NXDOMAIN) for unknown names.
            ushort flags = (ushort)(0x8180 | (known ? 0 : 3));
            var reply = new DnsMessage(query.Id, flags, query.Questions, ListModule.OfSeq(answers), FSharpList<DnsRecord>.Empty, FSharpList<DnsRecord>.Empty);
            await dns.SendToAsync(NetStack.Core.Wire.Dns.toBytes(reply), SocketFlags.None, received.RemoteEndPoint, ct);
        }
    }, ct);

    // 2. Resolve by hand: both families, in RFC 6724 order.
    var addresses = await stack.ResolveAsync("www.example.test", AddressFamily.Unspecified, ct);
    Console.WriteLine($"www.example.test is {string.Join(", ", addresses.Select(a => a.ToString()))}");

    // A name that does not exist fails as .NET's Dns class would.
    try
    {
        await stack.ResolveAsync("nothere.example.test", AddressFamily.Unspecified, ct);
        Console.Error.WriteLine("nothere.example.test resolved");
        return 1;
    }
    catch (SocketException e) when (e.SocketErrorCode == SocketError.HostNotFound)
    {
        Console.WriteLine($"nothere.example.test: {e.SocketErrorCode} ({e.Message})");
    }

    // 3. HttpClient by name, against a tiny HTTP server on the kernel side (both families).
    using var web = new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp) { DualMode = true };
    web.Bind(new IPEndPoint(IPAddress.IPv6Any, 8094));
    web.Listen();
    var webServer = Task.Run(async () =>
    {
        using var socket = await web.AcceptAsync(ct);
        var request = new byte[4096];
        int length = 0;
        while (!Encoding.ASCII.GetString(request, 0, length).Contains("\r\n\r\n"))
            length += await socket.ReceiveAsync(request.AsMemory(length), SocketFlags.None, ct);
        var lines = Encoding.ASCII.GetString(request, 0, length).Split("\r\n");
        var host = lines.FirstOrDefault(l => l.StartsWith("Host:", StringComparison.OrdinalIgnoreCase));
        Console.WriteLine($"kernel web server got \"{lines[0]}\" ({host}) from {socket.RemoteEndPoint}");
        const string body = "hello by name\n";
        var response = $"HTTP/1.1 200 OK\r\nContent-Length: {body.Length}\r\nConnection: close\r\n\r\n{body}";
        await socket.SendAsync(Encoding.ASCII.GetBytes(response), SocketFlags.None, ct);
        socket.Shutdown(SocketShutdown.Send);
    }, ct);

    using var http = stack.CreateHttpClient();
    var page = await http.GetStringAsync("http://www.example.test:8094/", ct);
    await webServer;
    Console.WriteLine($"HttpClient through NetStack fetched http://www.example.test:8094/: {page.Trim()}");

    Console.WriteLine("statistics:");
    Console.WriteLine(stack.Statistics);
}

Console.WriteLine("example finished");
return 0;
