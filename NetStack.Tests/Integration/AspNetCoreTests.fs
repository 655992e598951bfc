/// ASP.NET Core on NetStack: a minimal web app whose Kestrel uses the NetStack transport
/// (NetStack.AspNetCore), with the kernel's curl as the client, inside the test runner's private
/// network namespace.
module NetStack.Tests.Integration.AspNetCoreTests

open System
open System.IO
open System.Net
open System.Net.Sockets
open System.Security.Cryptography
open System.Threading
open System.Threading.Tasks
open Microsoft.AspNetCore.Builder
open Microsoft.AspNetCore.Hosting
open Microsoft.AspNetCore.Http
open Microsoft.AspNetCore.Server.Kestrel.Core
open System.Security.Cryptography.X509Certificates
open Microsoft.Extensions.DependencyInjection
open Microsoft.Extensions.Hosting
open Microsoft.Extensions.Logging
open Expecto
open NetStack
open NetStack.AspNetCore
open NetStack.Tests

/// Each test gets its own interface and subnet (10.97.N.0/24, fd97:N::/64).
let private optionsFor (n: int) =
    NetStackOptions(
        TunName = $"ns97web{n}",
        Address = IPAddress.Parse $"10.97.{n}.2",
        HostAddress = IPAddress.Parse $"10.97.{n}.1",
        Address6 = IPAddress.Parse $"fd97:{n}::2",
        HostAddress6 = IPAddress.Parse $"fd97:{n}::1",
        TcpLinger = TimeSpan.FromSeconds 2.0
    )

let private timeout = TimeSpan.FromSeconds 30.0

let private waitUnit (task: Task) = TestUtil.waitTaskWithin timeout task

/// The URL authority of an address and port ("10.0.0.1:80", "[fd00::1]:80").
let private authority (address: IPAddress) (port: int) =
    if address.AddressFamily = Sockets.AddressFamily.InterNetworkV6 then
        $"[{address}]:{port}"
    else
        $"{address}:{port}"

/// Random(seed)'s 1 MiB block.
let private patternBlock (seed: int) =
    let block = Array.zeroCreate<byte>(1 <<< 20)
    Random(seed).NextBytes block
    block

/// A minimal app on `stack`: GET /hello answers a fixed text, POST /sha256 answers the SHA-256
/// (hex) and length of the request body, GET /bytes/N/SEED serves N pattern bytes. Listens on
/// `urls` and what `kestrel` configures, through the transport `transport` configures; logging off.
let private webAppWithTransport
    (stack: NetworkStack)
    (transport: NetStackTransportOptions -> unit)
    (urls: string list)
    (kestrel: KestrelServerOptions -> unit)
    =
    let builder = WebApplication.CreateSlimBuilder(WebApplicationOptions(Args = [||]))

    builder.Logging.ClearProviders() |> ignore

    builder.WebHost.UseNetStack(stack, Action<NetStackTransportOptions> transport)
    |> ignore

    builder.WebHost.ConfigureKestrel kestrel |> ignore
    let app = builder.Build()

    app.MapGet("/hello", Func<string>(fun () -> "hello from ASP.NET Core on NetStack"))
    |> ignore

    app.MapPost(
        "/sha256",
        RequestDelegate(fun context ->
            task {
                use hash = IncrementalHash.CreateHash HashAlgorithmName.SHA256
                let buffer = Array.zeroCreate<byte> 65536
                let mutable total = 0L
                let mutable n = 1

                while n > 0 do
                    let! read = context.Request.Body.ReadAsync(Memory buffer)
                    n <- read
                    hash.AppendData(buffer, 0, n)
                    total <- total + int64 n

                do! context.Response.WriteAsync($"{Convert.ToHexString(hash.GetHashAndReset())} {total}")
            }
            :> Task)
    )
    |> ignore

    // GET /bytes/N/SEED: N bytes of Random(SEED)'s 1 MiB block, repeated, written through the
    // response's PipeWriter in pieces of up to 100 000 bytes.
    app.MapGet(
        "/bytes/{n:int}/{seed:int}",
        Func<HttpContext, int, int, Task>(fun context n seed ->
            task {
                let block = patternBlock seed
                context.Response.ContentLength <- int64 n
                let mutable sent = 0

                while sent < n do
                    let offset = sent % block.Length
                    let count = min (n - sent) (min 100000 (block.Length - offset))
                    let! _ = context.Response.BodyWriter.WriteAsync(ReadOnlyMemory(block, offset, count))
                    sent <- sent + count
            }
            :> Task)
    )
    |> ignore

    for url in urls do
        app.Urls.Add url

    app

let private webAppWith (stack: NetworkStack) (urls: string list) (kestrel: KestrelServerOptions -> unit) =
    webAppWithTransport stack ignore urls kestrel

let private webApp (stack: NetworkStack) (urls: string list) = webAppWith stack urls ignore

/// SHA-256 (hex) of `n` bytes of `patternBlock seed` repeated: what /bytes/N/SEED must serve.
let private patternHash (seed: int) (n: int) =
    let block = patternBlock seed
    use hash = IncrementalHash.CreateHash HashAlgorithmName.SHA256
    let mutable left = n

    while left > 0 do
        let count = min left block.Length
        hash.AppendData(block, 0, count)
        left <- left - count

    Convert.ToHexString(hash.GetHashAndReset())

/// Runs curl ARGS from the kernel side; returns (exit code, output).
let private curl (args: string list) =
    Isolation.run "curl" ([ "--silent"; "--show-error"; "--max-time"; "30"; "--globoff" ] @ args)

[<Tests>]
let tests =
    testSequenced
    <| testList
        "AspNetCore on NetStack"
        [
            test
                "curl gets a page and posts 1 MiB to a minimal app served through NetStack, IPv4 and IPv6, and the app stops cleanly" {
                use stack = NetworkStack.Start(optionsFor 4)
                let addresses = [ stack.Options.Address; stack.Options.Address6 ]

                let app = webApp stack [ for a in addresses -> $"http://{authority a 8080}" ]

                waitUnit (app.StartAsync())

                let folder = Directory.CreateTempSubdirectory "netstack-web"

                try
                    let body = Array.zeroCreate<byte>(1 <<< 20)
                    Random(4).NextBytes body
                    let file = Path.Combine(folder.FullName, "body.bin")
                    File.WriteAllBytes(file, body)
                    let expected = $"{Convert.ToHexString(SHA256.HashData body)} {body.Length}"

                    for address in addresses do
                        let baseUrl = $"http://{authority address 8080}"
                        let code, page = curl [ $"{baseUrl}/hello" ]
                        Expect.equal code 0 $"curl GET over {address}: {page}"
                        Expect.equal page "hello from ASP.NET Core on NetStack" "the page"

                        let code, answer =
                            curl
                                [
                                    "--data-binary"
                                    $"@{file}"
                                    "-H"
                                    "Content-Type: application/octet-stream"
                                    $"{baseUrl}/sha256"
                                ]

                        Expect.equal code 0 $"curl POST over {address}: {answer}"
                        Expect.equal answer expected "the app read the whole 1 MiB body intact"

                        // Two requests on one kept-alive connection.
                        let code, pages = curl [ $"{baseUrl}/hello"; $"{baseUrl}/hello" ]
                        Expect.equal code 0 $"two GETs over {address}: {pages}"

                        Expect.equal
                            pages
                            "hello from ASP.NET Core on NetStackhello from ASP.NET Core on NetStack"
                            "both answers"
                finally
                    folder.Delete true

                waitUnit (app.StopAsync())
                waitUnit ((app.DisposeAsync()).AsTask())
                // The app released its port on the stack: it can be bound again.
                use again = stack.ListenTcp 8080
                Expect.equal again.LocalEndPoint.Port 8080 "port 8080 is free after the app stopped"
                Expect.equal stack.Statistics.["tcp.reset-received"] 0L "curl reset no connection"
                Expect.equal stack.Statistics.["tcp.aborted"] 0L "the transport aborted no connection"
                TestUtil.assertNoExceptions stack
            }

            test
                "16 MiB both ways through the pipe transport: curl and HttpClient download and upload, SHA-256 computed in the test, IPv4 and IPv6" {
                use stack = NetworkStack.Start(optionsFor 8)
                let addresses = [ stack.Options.Address; stack.Options.Address6 ]
                let app = webApp stack [ for a in addresses -> $"http://{authority a 8080}" ]
                waitUnit (app.StartAsync())
                let folder = Directory.CreateTempSubdirectory "netstack-web-large"
                let size = 16 <<< 20

                try
                    let upload = Array.zeroCreate<byte> size
                    Random(81).NextBytes upload
                    let file = Path.Combine(folder.FullName, "upload.bin")
                    File.WriteAllBytes(file, upload)
                    let uploaded = $"{Convert.ToHexString(SHA256.HashData upload)} {size}"
                    use client = new Net.Http.HttpClient(Timeout = timeout)

                    for address in addresses do
                        let baseUrl = $"http://{authority address 8080}"
                        let seed = address.GetAddressBytes().[3] |> int
                        let expected = patternHash seed size
                        let downloaded = Path.Combine(folder.FullName, "download.bin")
                        let code, output = curl [ "-o"; downloaded; $"{baseUrl}/bytes/{size}/{seed}" ]
                        Expect.equal code 0 $"curl download over {address}: {output}"

                        Expect.equal
                            (Convert.ToHexString(SHA256.HashData(File.ReadAllBytes downloaded)))
                            expected
                            $"curl got the 16 MiB intact over {address}"

                        let bytes =
                            client.GetByteArrayAsync($"{baseUrl}/bytes/{size}/{seed + 1}")
                            |> TestUtil.waitWithin timeout

                        Expect.equal
                            (Convert.ToHexString(SHA256.HashData bytes))
                            (patternHash (seed + 1) size)
                            $"HttpClient got the 16 MiB intact over {address}"

                        let code, answer =
                            curl
                                [
                                    "--data-binary"
                                    $"@{file}"
                                    "-H"
                                    "Content-Type: application/octet-stream"
                                    $"{baseUrl}/sha256"
                                ]

                        Expect.equal code 0 $"curl upload over {address}: {answer}"
                        Expect.equal answer uploaded $"the app read curl's 16 MiB intact over {address}"

                        let answer =
                            task {
                                use content = new Net.Http.ByteArrayContent(upload)
                                let! response = client.PostAsync($"{baseUrl}/sha256", content)
                                response.EnsureSuccessStatusCode() |> ignore
                                return! response.Content.ReadAsStringAsync()
                            }
                            |> TestUtil.waitWithin timeout

                        Expect.equal answer uploaded $"the app read HttpClient's 16 MiB intact over {address}"
                finally
                    folder.Delete true

                waitUnit (app.StopAsync())
                waitUnit ((app.DisposeAsync()).AsTask())
                Expect.equal stack.Statistics.["tcp.reset-received"] 0L "no client reset a connection"
                Expect.equal stack.Statistics.["tcp.aborted"] 0L "the transport aborted no connection"
                TestUtil.assertNoExceptions stack
            }

            test
                "a URL whose address is not the stack's fails the start with a message naming it and the stack's addresses; with OtherAddressesToKernel it goes to the kernel's sockets" {
                use stack = NetworkStack.Start(optionsFor 9)

                for foreign in [ stack.Options.HostAddress; IPAddress.Loopback ] do
                    let app = webApp stack [ $"http://{authority foreign 8080}" ]

                    try
                        let failure =
                            try
                                app.StartAsync().Wait timeout |> ignore
                                None
                            with :? AggregateException as e ->
                                Some e.InnerException

                        match failure with
                        | Some(:? InvalidOperationException as e) ->
                            Expect.stringContains e.Message $"{foreign}:8080" "the message names the endpoint"
                            Expect.stringContains e.Message $"{stack.Options.Address}" "and the stack's IPv4 address"
                            Expect.stringContains e.Message $"{stack.Options.Address6}" "and its IPv6 address"
                            Expect.stringContains e.Message "OtherAddressesToKernel" "and the way out"
                        | other -> failtestf "expected InvalidOperationException for %O, got %A" foreign other
                    finally
                        (app.DisposeAsync()).AsTask().Wait timeout |> ignore

                // Opted in: loopback is served by Kestrel's socket transport (the kernel), the
                // stack's address by the stack, in one app.
                let app =
                    webAppWithTransport
                        stack
                        (fun o -> o.OtherAddressesToKernel <- true)
                        [ "http://127.0.0.1:8081"; $"http://{authority stack.Options.Address 8081}" ]
                        ignore

                waitUnit (app.StartAsync())

                try
                    let connectedBefore = stack.Statistics.["tcp.connected"]
                    let code, page = curl [ "http://127.0.0.1:8081/hello" ]
                    Expect.equal code 0 $"curl over the kernel's loopback: {page}"
                    Expect.equal page "hello from ASP.NET Core on NetStack" "the page, from the kernel's socket"
                    Expect.equal stack.Statistics.["tcp.connected"] connectedBefore "the stack saw no connection"
                    let code, page = curl [ $"http://{authority stack.Options.Address 8081}/hello" ]
                    Expect.equal code 0 $"curl over the stack: {page}"
                    Expect.isGreaterThan stack.Statistics.["tcp.connected"] connectedBefore "through the stack"
                finally
                    waitUnit (app.StopAsync())
                    waitUnit ((app.DisposeAsync()).AsTask())

                TestUtil.assertNoExceptions stack
            }

            test
                "a generic host with AddNetStack starts the stack (the kernel pings it and connects to it) and disposes it when the host stops" {
                let options = optionsFor 40

                let builder =
                    Host.CreateApplicationBuilder(HostApplicationBuilderSettings(Args = [||], DisableDefaults = true))

                builder.Services.AddNetStack options |> ignore
                use host = builder.Build()
                waitUnit (host.StartAsync())
                let stack = host.Services.GetRequiredService<NetworkStack>()

                Expect.isTrue
                    (obj.ReferenceEquals(stack, host.Services.GetRequiredService<NetworkStack>()))
                    "one stack (a singleton)"

                KernelPing.answered [ "-c"; "2"; "-i"; "0.2"; "-W"; "5"; $"{options.Address}" ]
                |> ignore

                do
                    use listener = stack.ListenTcp 7000

                    use client =
                        new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                    client.Connect(IPEndPoint(options.Address, 7000))
                    use connection = TestUtil.waitWithin timeout (listener.AcceptAsync().AsTask())
                    client.Send(Text.Encoding.ASCII.GetBytes "hi") |> ignore
                    let two = Array.zeroCreate<byte> 2
                    Expect.equal (TestUtil.waitWithin timeout (connection.ReadAsync(Memory two).AsTask())) 2 "read"
                    Expect.equal (Text.Encoding.ASCII.GetString two) "hi" "the kernel's bytes"

                waitUnit (host.StopAsync())

                Expect.throwsT<ObjectDisposedException>
                    (fun () -> stack.ListenTcp 7001 |> ignore)
                    "the stack is disposed once the host stopped"

                let code, _ = Isolation.run "ip" [ "link"; "show"; options.TunName ]
                Expect.notEqual code 0 "its TUN device is gone"
                TestUtil.assertNoExceptions stack
            }

            test
                "a web app with UseNetStack(options) starts its own stack, serves curl from the stack's address, and stops it" {
                let options = optionsFor 41
                let builder = WebApplication.CreateSlimBuilder(WebApplicationOptions(Args = [||]))
                builder.Logging.ClearProviders() |> ignore
                builder.WebHost.UseNetStack(options) |> ignore
                let app = builder.Build()

                app.MapGet("/hello", Func<string>(fun () -> "hello from a stack of its own"))
                |> ignore

                app.Urls.Add $"http://{authority options.Address 8080}"
                app.Urls.Add $"http://{authority options.Address6 8080}"
                waitUnit (app.StartAsync())
                let stack = app.Services.GetRequiredService<NetworkStack>()

                try
                    for address in [ options.Address; options.Address6 ] do
                        let code, page = curl [ $"http://{authority address 8080}/hello" ]
                        Expect.equal code 0 $"curl over {address}: {page}"
                        Expect.equal page "hello from a stack of its own" "the page"
                finally
                    waitUnit (app.StopAsync())
                    waitUnit ((app.DisposeAsync()).AsTask())

                Expect.throwsT<ObjectDisposedException>
                    (fun () -> stack.ListenTcp 7001 |> ignore)
                    "the stack is disposed once the app stopped"

                Expect.equal stack.Statistics.["tcp.aborted"] 0L "the transport aborted no connection"
                TestUtil.assertNoExceptions stack
            }

            test "a port taken on the stack makes the app fail to start with an address-in-use error" {
                use stack = NetworkStack.Start(optionsFor 5)
                use _taken = stack.ListenTcp 8080
                let app = webApp stack [ $"http://{authority stack.Options.Address 8080}" ]

                try
                    let start = app.StartAsync()

                    let failed =
                        try
                            start.Wait timeout |> ignore
                            None
                        with :? AggregateException as e ->
                            Some e.InnerException

                    match failed with
                    | Some(:? IOException as e) ->
                        Expect.stringContains e.Message "address already in use" "Kestrel's bind failure"
                    | other -> failtestf "expected Kestrel's IOException, got %A" other
                finally
                    (app.DisposeAsync()).AsTask().Wait timeout |> ignore

                TestUtil.assertNoExceptions stack
            }

            test "Kestrel's own HTTPS runs over the NetStack transport: curl verifies the certificate, IPv4 and IPv6" {
                use stack = NetworkStack.Start(optionsFor 6)
                let folder = Directory.CreateTempSubdirectory "netstack-web-tls"

                try
                    let cert, key =
                        TlsTests.selfSigned
                            folder.FullName
                            "/CN=netstack-web"
                            [
                                "-addext"
                                $"subjectAltName=IP:{stack.Options.Address},IP:{stack.Options.Address6}"
                            ]

                    use certificate = X509Certificate2.CreateFromPemFile(cert, key)
                    let addresses = [ stack.Options.Address; stack.Options.Address6 ]

                    let app =
                        webAppWith stack [] (fun kestrel ->
                            for address in addresses do
                                kestrel.Listen(address, 8443, (fun listen -> listen.UseHttps certificate |> ignore)))

                    waitUnit (app.StartAsync())

                    try
                        for address in addresses do
                            // --cacert: curl checks the chain and that the certificate names the address.
                            let code, page =
                                curl [ "--cacert"; cert; $"https://{authority address 8443}/hello" ]

                            Expect.equal code 0 $"curl over https to {address}: {page}"
                            Expect.equal page "hello from ASP.NET Core on NetStack" "the page, over TLS"
                    finally
                        waitUnit (app.StopAsync())
                        waitUnit ((app.DisposeAsync()).AsTask())
                finally
                    folder.Delete true

                TestUtil.assertNoExceptions stack
            }

            test "a client's reset aborts the running request, and HttpContext.Abort resets the client's connection" {
                use stack = NetworkStack.Start(optionsFor 7)
                let baseUrl = $"http://{authority stack.Options.Address 8080}"
                let app = webApp stack [ baseUrl ]

                let started =
                    TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)

                let aborted =
                    TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)

                app.MapGet(
                    "/wait",
                    RequestDelegate(fun context ->
                        task {
                            started.TrySetResult() |> ignore

                            try
                                do! Task.Delay(Timeout.Infinite, context.RequestAborted)
                            with :? OperationCanceledException ->
                                aborted.TrySetResult() |> ignore
                        }
                        :> Task)
                )
                |> ignore

                app.MapGet(
                    "/abort",
                    RequestDelegate(fun context ->
                        context.Abort()
                        Task.CompletedTask)
                )
                |> ignore

                waitUnit (app.StartAsync())

                try
                    // A kernel client sends a request, then resets its connection (SO_LINGER 0).
                    use client =
                        new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

                    client.Connect(IPEndPoint(stack.Options.Address, 8080))

                    client.Send(Text.Encoding.ASCII.GetBytes "GET /wait HTTP/1.1\r\nHost: test\r\n\r\n")
                    |> ignore

                    Expect.isTrue (started.Task.Wait timeout) "the request reached the app"
                    client.LingerState <- LingerOption(true, 0)
                    client.Close()
                    Expect.isTrue (aborted.Task.Wait timeout) "RequestAborted fired when the client reset"
                    Expect.equal stack.Statistics.["tcp.reset-received"] 1L "the stack saw the one RST"
                    // The app aborts: curl's connection is reset, with no reply (curl's exit 56,
                    // "Failure with receiving network data": ECONNRESET on its read).
                    let before = stack.Statistics.["tcp.aborted"]
                    let code, output = curl [ $"{baseUrl}/abort" ]
                    Expect.equal code 56 $"curl's receive failed: {output}"
                    Expect.stringContains output "Connection reset by peer" "with ECONNRESET"
                    Expect.equal stack.Statistics.["tcp.aborted"] (before + 1L) "the transport reset the connection"
                finally
                    waitUnit (app.StopAsync())
                    waitUnit ((app.DisposeAsync()).AsTask())

                TestUtil.assertNoExceptions stack
            }
        ]
