// A tun2socks-style proxy on NetStack's forwarder API: the stack takes TCP connections to ANY
// address that reaches its TUN device, and each one is spliced to a single service on the host's
// loopback, after that service accepted (so a refused upstream refuses the client, with a RST).
//
//     dotnet build examples/ForwardProxy -c Release
//     unshare --user --map-root-user --net dotnet examples/ForwardProxy/bin/Release/net10.0/ForwardProxy.dll
//
// Without arguments it also plays both ends: a kernel echo service on 127.0.0.1 and a kernel
// client that connects to 198.51.100.7:80 (routed into the TUN). Exits 0 when the echo came back.
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using NetStack;

using var service = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
service.Bind(new IPEndPoint(IPAddress.Loopback, 0));
service.Listen();
var upstream = (IPEndPoint)service.LocalEndPoint!;
_ = Task.Run(async () =>
{
    while (true)
    {
        var peer = await service.AcceptAsync();
        _ = Task.Run(async () =>
        {
            using (peer)
                await new NetworkStream(peer).CopyToAsync(new NetworkStream(peer));
        });
    }
});

await using var stack = NetworkStack.Start(new NetStackOptions
{
    TunName = "nsproxy%d",
    Address = IPAddress.Parse("10.94.0.2"),
    HostAddress = IPAddress.Parse("10.94.0.1"),
    Address6 = null,
    HostAddress6 = null,
    AnyDestination = true, // take packets to every address, not only 10.94.0.2
});
Process.Start("ip", ["route", "add", "198.51.100.0/24", "dev", stack.InterfaceName]).WaitForExit();
using var forwarder = stack.ForwardTcp();
_ = Task.Run(async () =>
{
    while (true)
    {
        var request = await forwarder.AcceptAsync();
        _ = ForwardAsync(request, upstream);
    }
});

// The client: any address in the routed prefix reaches the proxy.
using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
await client.ConnectAsync(new IPEndPoint(IPAddress.Parse("198.51.100.7"), 80));
var message = Encoding.ASCII.GetBytes("hello through a forwarder");
await client.SendAsync(message);
client.Shutdown(SocketShutdown.Send);
var reply = new byte[100];
int got = 0, n;
while ((n = await client.ReceiveAsync(reply.AsMemory(got))) > 0)
    got += n;
Console.WriteLine($"client got back \"{Encoding.ASCII.GetString(reply, 0, got)}\"");
Console.WriteLine($"statistics:\n{stack.Statistics}");
return got == message.Length ? 0 : 1;

// Dial the upstream first; only then answer the client's SYN (accept) or refuse it.
static async Task ForwardAsync(TcpForwardRequest request, IPEndPoint upstream)
{
    var socket = new Socket(upstream.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
    try
    {
        await socket.ConnectAsync(upstream);
    }
    catch (SocketException)
    {
        socket.Dispose();
        request.Refuse(ForwardRefusal.Reset);
        return;
    }
    await using var connection = await request.AcceptAsync();
    Console.WriteLine($"forwarding {request.RemoteEndPoint} -> {request.LocalEndPoint} to {upstream}");
    using var remote = new NetworkStream(socket, ownsSocket: true);
    await Task.WhenAll(
        SpliceAsync(connection, remote, () => socket.Shutdown(SocketShutdown.Send)),
        SpliceAsync(remote, connection, connection.ShutdownWrite));
}

// Copies until the source's FIN, then passes the FIN on (a half-close, both ways independent).
static async Task SpliceAsync(Stream from, Stream to, Action finish)
{
    var buffer = new byte[256 * 1024];
    int n;
    while ((n = await from.ReadAsync(buffer)) > 0)
        await to.WriteAsync(buffer.AsMemory(0, n));
    finish();
}
