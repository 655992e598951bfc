/// TLS over NetStack's TCP: .NET's SslStream on a NetStack TcpConnection, and HttpClient over
/// NetStack with https, against the kernel side's `openssl s_server`, inside the test runner's
/// private network namespace. Each test makes a self-signed certificate with `openssl req` in a
/// temporary folder and pins it: the client accepts exactly that certificate (SHA-256 thumbprint),
/// so the handshake really authenticates the server.
module NetStack.Tests.Integration.TlsTests

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.IO
open System.Net
open System.Net.Security
open System.Security.Authentication
open System.Security.Cryptography
open System.Security.Cryptography.X509Certificates
open System.Text
open System.Threading.Tasks
open Expecto
open NetStack
open NetStack.Tests

/// Each test gets its own interface and subnet (10.97.N.0/24, fd97:N::/64).
let private optionsFor (n: int) =
    NetStackOptions(
        TunName = $"ns97tls{n}",
        Address = IPAddress.Parse $"10.97.{n}.2",
        HostAddress = IPAddress.Parse $"10.97.{n}.1",
        Address6 = IPAddress.Parse $"fd97:{n}::2",
        HostAddress6 = IPAddress.Parse $"fd97:{n}::1",
        TcpLinger = TimeSpan.FromSeconds 2.0
    )

/// The kernel side's addresses of test n, IPv4 then IPv6.
let private kernelAddresses (n: int) =
    [ IPAddress.Parse $"10.97.{n}.1"; IPAddress.Parse $"fd97:{n}::1" ]

let private timeout = TimeSpan.FromSeconds 30.0

let private wait (task: Threading.Tasks.Task<'T>) : 'T =
    NetStack.Tests.TestUtil.waitWithin timeout task

/// A self-signed certificate (EC P-256, valid two days, subject `subject`, then the `openssl req`
/// arguments `extra`) made by `openssl req` in `folder`: (certificate file, key file), PEM.
let selfSigned (folder: string) (subject: string) (extra: string list) =
    let cert = Path.Combine(folder, "cert.pem")
    let key = Path.Combine(folder, "key.pem")

    let code, output =
        Isolation.run
            "openssl"
            ([
                "req"
                "-x509"
                "-newkey"
                "ec"
                "-pkeyopt"
                "ec_paramgen_curve:P-256"
                "-nodes"
                "-keyout"
                key
                "-out"
                cert
                "-days"
                "2"
                "-subj"
                subject
             ]
             @ extra)

    Expect.equal code 0 $"openssl req makes the certificate: {output}"
    cert, key

/// A self-signed certificate (EC P-256, CN netstack-test) made by `openssl req` in a new temporary
/// folder: (folder, certificate file, key file, SHA-256 thumbprint of the certificate).
let private makeCertificate () =
    let folder = Directory.CreateTempSubdirectory "netstack-tls"
    let cert, key = selfSigned folder.FullName "/CN=netstack-test" []
    use certificate = X509Certificate2.CreateFromPem(File.ReadAllText cert)
    folder, cert, key, certificate.GetCertHashString HashAlgorithmName.SHA256

/// A certificate validation callback that accepts only the certificate with `thumbprint`, and
/// counts how often it was asked.
let private pinned (thumbprint: string) (asked: int ref) =
    RemoteCertificateValidationCallback(fun _ certificate _ _ ->
        asked.Value <- asked.Value + 1

        not (isNull certificate)
        && String.Equals(
            certificate.GetCertHashString HashAlgorithmName.SHA256,
            thumbprint,
            StringComparison.OrdinalIgnoreCase
        ))

/// A running `openssl s_server`, its output collected line by line.
type private Server =
    {
        Process: Process
        Lines: ConcurrentQueue<string>
    }

    member s.Output = String.Join("\n", s.Lines)

    member s.Stop() =
        if not s.Process.HasExited then
            s.Process.Kill true

        s.Process.WaitForExit 5000 |> ignore
        s.Process.Dispose()

/// Starts `openssl s_server -accept [address]:port ARGS` in `folder` and waits until it accepts.
let private startServer (folder: string) (address: IPAddress) (port: int) (args: string list) =
    let host =
        if address.AddressFamily = Sockets.AddressFamily.InterNetworkV6 then
            $"[{address}]"
        else
            string address

    let psi =
        ProcessStartInfo(
            "openssl",
            [ "s_server"; "-accept"; $"{host}:{port}" ] @ args,
            WorkingDirectory = folder,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true
        )

    let p = new Process(StartInfo = psi)
    let lines = ConcurrentQueue<string>()

    let accepting =
        TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)

    let collect (e: DataReceivedEventArgs) =
        if not (isNull e.Data) then
            lines.Enqueue e.Data

            if e.Data = "ACCEPT" then
                accepting.TrySetResult() |> ignore

    p.OutputDataReceived.Add collect
    p.ErrorDataReceived.Add collect
    p.Start() |> ignore
    p.BeginOutputReadLine()
    p.BeginErrorReadLine()
    let server = { Process = p; Lines = lines }

    if not (accepting.Task.Wait(TimeSpan.FromSeconds 10.0)) then
        server.Stop()
        failtestf "openssl s_server did not start:\n%s" server.Output

    server

/// Lines of random letters (the s_server -rev echo works on text lines).
let private randomLines (count: int) (length: int) (seed: int) =
    let random = Random seed

    [
        for _ in 1..count -> String(Array.init length (fun _ -> char (int 'a' + random.Next 26)))
    ]

let private reversed (s: string) = String(Array.rev (s.ToCharArray()))

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Tls with the kernel"
        [
            test
                "SslStream over a NetStack connection talks to openssl s_server with a pinned certificate, both ways, and closes cleanly, IPv4 and IPv6" {
                let folder, cert, key, thumbprint = makeCertificate ()

                try
                    use stack = NetworkStack.Start(optionsFor 1)

                    for address in kernelAddresses 1 do
                        // -rev: every line comes back reversed; -naccept 1: exit after one connection.
                        let server =
                            startServer
                                folder.FullName
                                address
                                4433
                                [ "-cert"; cert; "-key"; key; "-rev"; "-naccept"; "1" ]

                        try
                            let asked = ref 0
                            let lines = randomLines 300 1000 (int address.AddressFamily)

                            let exchange =
                                task {
                                    let! connection = stack.ConnectTcpAsync(IPEndPoint(address, 4433))
                                    use tls = new SslStream(connection, leaveInnerStreamOpen = false)

                                    do!
                                        tls.AuthenticateAsClientAsync(
                                            SslClientAuthenticationOptions(
                                                TargetHost = "netstack-test",
                                                RemoteCertificateValidationCallback = pinned thumbprint asked
                                            )
                                        )

                                    let protocol = tls.SslProtocol
                                    let encoding = UTF8Encoding false
                                    use reader = new StreamReader(tls, encoding, false, 4096, leaveOpen = true)

                                    // Write every line while reading the answers, so neither side's
                                    // buffers have to hold the whole exchange.
                                    let writing =
                                        task {
                                            for line in lines do
                                                let bytes = encoding.GetBytes(line + "\n")
                                                do! tls.WriteAsync(ReadOnlyMemory bytes)

                                            do! tls.FlushAsync()
                                        }

                                    let answers = ResizeArray<string>()

                                    while answers.Count < lines.Length do
                                        let! line = reader.ReadLineAsync()

                                        if isNull line then
                                            failtest $"the server closed after {answers.Count} lines"

                                        answers.Add line

                                    do! writing
                                    // Our close_notify and FIN; the server answers with its own close.
                                    do! tls.ShutdownAsync()
                                    connection.ShutdownWrite()
                                    let! rest = reader.ReadToEndAsync()
                                    do! tls.DisposeAsync()
                                    return protocol, List.ofSeq answers, rest
                                }

                            let protocol, answers, rest = wait exchange
                            Expect.equal asked.Value 1 "the pinning callback judged the server's certificate once"
                            Expect.isTrue (protocol >= SslProtocols.Tls12) $"a modern TLS version ({protocol})"

                            Expect.equal
                                answers
                                (lines |> List.map reversed)
                                $"every line came back reversed over {address}"

                            Expect.equal rest "" "nothing after the server's close"
                            Expect.isTrue (server.Process.WaitForExit 10000) "s_server exits after its one connection"
                            // The untimed wait also drains the asynchronous output readers.
                            server.Process.WaitForExit()
                            Expect.equal server.Process.ExitCode 0 $"s_server ends cleanly:\n{server.Output}"
                            Expect.stringContains server.Output "CONNECTION CLOSED" "s_server saw the connection close"
                        finally
                            server.Stop()

                    Expect.equal stack.Statistics.["tcp.reset-received"] 0L "no connection was reset"
                    TestUtil.assertNoExceptions stack
                finally
                    folder.Delete true
            }

            test "the handshake fails when the server's certificate is not the pinned one" {
                let folder, cert, key, _ = makeCertificate ()

                try
                    use stack = NetworkStack.Start(optionsFor 2)
                    let address = List.head (kernelAddresses 2)

                    let server =
                        startServer folder.FullName address 4433 [ "-cert"; cert; "-key"; key; "-rev"; "-naccept"; "1" ]

                    try
                        let asked = ref 0

                        let attempt =
                            task {
                                let! connection = stack.ConnectTcpAsync(IPEndPoint(address, 4433))
                                use tls = new SslStream(connection, leaveInnerStreamOpen = false)

                                try
                                    do!
                                        tls.AuthenticateAsClientAsync(
                                            SslClientAuthenticationOptions(
                                                TargetHost = "netstack-test",
                                                RemoteCertificateValidationCallback = pinned (String('0', 64)) asked
                                            )
                                        )

                                    return None
                                with e ->
                                    return Some e
                            }

                        match wait attempt with
                        | Some(:? AuthenticationException) -> ()
                        | other -> failtestf "expected an AuthenticationException, got %A" other

                        Expect.equal asked.Value 1 "the callback was asked"
                    finally
                        server.Stop()

                    TestUtil.assertNoExceptions stack
                finally
                    folder.Delete true
            }

            test "HttpClient over NetStack fetches a file over https from openssl s_server -WWW, IPv4 and IPv6" {
                let folder, cert, key, thumbprint = makeCertificate ()

                try
                    let body = Array.zeroCreate<byte> 300_000
                    Random(3).NextBytes body
                    File.WriteAllBytes(Path.Combine(folder.FullName, "blob.bin"), body)
                    use stack = NetworkStack.Start(optionsFor 3)

                    for address in kernelAddresses 3 do
                        // -WWW: serves files from its working folder ("GET /blob.bin").
                        let server =
                            startServer folder.FullName address 4443 [ "-cert"; cert; "-key"; key; "-WWW" ]

                        try
                            let asked = ref 0
                            let handler = stack.CreateHttpHandler()
                            handler.SslOptions.RemoteCertificateValidationCallback <- pinned thumbprint asked
                            use client = new Net.Http.HttpClient(handler, disposeHandler = true)

                            let host =
                                if address.AddressFamily = Sockets.AddressFamily.InterNetworkV6 then
                                    $"[{address}]"
                                else
                                    string address

                            let fetched = client.GetByteArrayAsync($"https://{host}:4443/blob.bin") |> wait
                            // One request, one connection, one handshake.
                            Expect.equal asked.Value 1 "the pinned certificate was checked once"

                            Expect.equal
                                (Convert.ToHexString(SHA256.HashData fetched))
                                (Convert.ToHexString(SHA256.HashData body))
                                $"the file came through TLS over NetStack intact over {address}"
                        finally
                            server.Stop()

                    TestUtil.assertNoExceptions stack
                finally
                    folder.Delete true
            }
        ]
