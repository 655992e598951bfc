// NetStack.Api as an outside user sees it: bring a userspace stack up on a TUN device, run a TCP
// echo server on it and talk to that server from an ordinary kernel socket, then fetch a web page
// from a kernel-side server with an HttpClient whose connections go through NetStack.
//
// Run it where creating a TUN device is allowed, e.g. in a throwaway network namespace:
//
//     dotnet build examples/EchoAndHttp -c Release
//     unshare --user --map-root-user --net dotnet examples/EchoAndHttp/bin/Release/net10.0/EchoAndHttp.dll
//
// It prints one line per step and exits 0 when every step worked, 1 otherwise.

using System.Net;
using System.Net.Sockets;
using System.Text;
using NetStack;
using NetStack.Device;

// The point-to-point link: the kernel side is 10.93.0.1 / fd93::1, the stack is 10.93.0.2 /
// fd93::2. Any private addresses work; these keep clear of other users of the namespace.
var options = new NetStackOptions
{
    TunName = "nsexample%d",
    Address = IPAddress.Parse("10.93.0.2"),
    HostAddress = IPAddress.Parse("10.93.0.1"),
    Address6 = IPAddress.Parse("fd93::2"),
    HostAddress6 = IPAddress.Parse("fd93::1"),
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
    // No CAP_NET_ADMIN, or no /dev/net/tun: the message says what to do.
    Console.Error.WriteLine($"cannot bring the stack up: {e.Message}");
    return 1;
}

await using (stack)
{
    Console.WriteLine($"stack up: {stack}");

    // 1. A TCP echo server on the stack, port 7 on both families.
    await using var listener = stack.ListenTcp(7);
    var server = Task.Run(async () =>
    {
        await using var connection = await listener.AcceptAsync(ct);
        Console.WriteLine($"echo server accepted {connection.RemoteEndPoint}");
        await connection.CopyToAsync(connection, ct);   // until the client's FIN
        connection.ShutdownWrite();                      // then ours
    }, ct);

    // A kernel socket connects to the stack's address like to any other machine.
    using (var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
    {
        await client.ConnectAsync(new IPEndPoint(options.Address!, 7), ct);
        var message = Encoding.ASCII.GetBytes("hello through a userspace TCP/IP stack");
        await client.SendAsync(message, SocketFlags.None, ct);
        client.Shutdown(SocketShutdown.Send);

        var echoed = new MemoryStream();
        var buffer = new byte[4096];
        int n;
        while ((n = await client.ReceiveAsync(buffer, SocketFlags.None, ct)) > 0)
            echoed.Write(buffer, 0, n);

        var reply = Encoding.ASCII.GetString(echoed.ToArray());
        Console.WriteLine($"kernel client got its {echoed.Length} bytes back: \"{reply}\"");
        if (!echoed.ToArray().AsSpan().SequenceEqual(message))
        {
            Console.Error.WriteLine("the echo differs from what was sent");
            return 1;
        }
    }
    await server;

    // 2. HttpClient over NetStack, against a tiny HTTP server on the kernel side.
    using var web = new System.Net.Sockets.TcpListener(options.HostAddress!, 8093);
    web.Start();
    var webServer = Task.Run(async () =>
    {
        using var socket = await web.AcceptSocketAsync(ct);
        var request = new byte[4096];
        int length = 0;
        // Read the request head (up to the blank line); a GET has no body.
        while (!Encoding.ASCII.GetString(request, 0, length).Contains("\r\n\r\n"))
            length += await socket.ReceiveAsync(request.AsMemory(length), SocketFlags.None, ct);
        var firstLine = Encoding.ASCII.GetString(request, 0, length).Split("\r\n")[0];
        Console.WriteLine($"kernel web server got \"{firstLine}\" from {socket.RemoteEndPoint}");
        const string body = "<h1>served by the kernel, fetched through NetStack</h1>\n";
        var response = $"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {body.Length}\r\nConnection: close\r\n\r\n{body}";
        await socket.SendAsync(Encoding.ASCII.GetBytes(response), SocketFlags.None, ct);
        socket.Shutdown(SocketShutdown.Send);
    }, ct);

    using var http = stack.CreateHttpClient();
    var page = await http.GetStringAsync($"http://{options.HostAddress}:8093/", ct);
    await webServer;
    Console.WriteLine($"HttpClient through NetStack fetched {page.Length} bytes: {page.Trim()}");

    // Every counter the stack keeps, including drops by reason.
    Console.WriteLine("statistics:");
    Console.WriteLine(stack.Statistics);
}

Console.WriteLine("example finished");
return 0;
