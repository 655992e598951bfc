using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace NetStack.Cli;

/// <summary>
/// The bench's measurements, the same client code for both paths: UDP round trips and rate, TCP
/// ping-pong (also with the stack as the client), short connections per second, TCP bulk both ways
/// and segmented UDP sends.
/// </summary>
public static partial class BenchCommand
{
    /// <summary>Bytes per send and per receive of the bulk client, and of both sides' bulk services: large enough that no side pays per call.</summary>
    private const int BulkBlock = 1 << 20;

    /// <summary>
    /// TCP bulk throughput against the discard and source services at <paramref name="target"/>,
    /// with <see cref="Plan.BulkFlows"/> connections in parallel sharing <see cref="Plan.TcpBytes"/>:
    /// kernel → X (each flow sends its share, half-closes, waits for the service's close) and X →
    /// kernel (each asks for its share and reads to the end). Gbit/s of payload over the time from
    /// the first connect to the last close; processor time per GB (<paramref name="cpu"/>); and the
    /// bytes this whole process allocated (<see cref="GC.GetTotalAllocatedBytes(bool)"/>) per
    /// packet that <paramref name="packets"/> counted through the interface, over each transfer.
    /// Each direction runs <see cref="Plan.BulkRuns"/> times, the median taken (the largest
    /// allocation); with <paramref name="reference"/> (iperf3 on the kernel column's veth; its
    /// argument: the reverse direction) the reference runs after each transfer, alternating, so
    /// that both see the same machine.
    /// </summary>
    private static void MeasureBulk(IPAddress target, Plan plan, Func<long> packets, CpuMeter cpu, Measurement m,
        Func<bool, (double Gbps, CpuTime? PerGB)>? reference = null)
    {
        var (bytes, flows) = (plan.TcpBytes, plan.BulkFlows);
        // Warm-up: JIT and first-use paths of both services, so that the figures (and the
        // allocation counts) are the steady state's. The runtime compiles a hot method at full
        // optimization only after it has run unoptimized, then instrumented, for a while: with a
        // 1 MiB warm-up a 256 MiB transfer at MTU 65000 (a fraction of a second) ran the stack's
        // per-segment paths as unoptimized code for much of its length, and its figure swung
        // between 6 and 13 Gbit/s from run to run. So: transfers of up to 64 MiB each way, for a
        // second at least in each direction and then until the JIT has settled.
        WarmUp(DiscardPort);
        WarmUp(SourcePort);
        m.In = Runs(DiscardPort, reverse: false);
        m.Out = Runs(SourcePort, reverse: true);

        BulkFigures Runs(int port, bool reverse)
        {
            var ours = new List<(double Gbps, double BytesPerPacket, CpuTime? PerGB)>();
            var theirs = new List<(double Gbps, CpuTime? PerGB)>();
            for (var i = 0; i < plan.BulkRuns; i++)
            {
                ours.Add(BulkTransfer(target, port, bytes, flows, packets, cpu, m));
                if (reference is not null)
                    theirs.Add(reference(reverse));
            }
            return new BulkFigures(
                [.. ours.Select(r => r.Gbps)], ours.Max(r => r.BytesPerPacket), MedianCpu(ours.Select(r => r.PerGB)),
                reference is null ? null : [.. theirs.Select(r => r.Gbps)], MedianCpu(theirs.Select(r => r.PerGB)));
        }

        void WarmUp(int port)
        {
            var settling = new JitSettling(BulkWarmUp, MaxWarmUp);
            for (var i = 0; i < 16 && (i == 0 || !settling.Settled()); i++)
                BulkTransfer(target, port, Math.Min(bytes, 64L << 20), flows, packets, null, m);
        }
    }

    /// <summary>The median of the processes' and of the machine's figures, each on its own; null when there is none.</summary>
    private static CpuTime? MedianCpu(IEnumerable<CpuTime?> times)
    {
        var all = times.OfType<CpuTime>().ToList();
        return all.Count == 0 ? null : new CpuTime(Median(all.Select(t => t.Processes)), Median(all.Select(t => t.Machine)));
    }

    /// <summary>The median (of an even count, the mean of the middle two).</summary>
    private static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToList();
        return sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[sorted.Count / 2 - 1] + sorted[sorted.Count / 2]) / 2;
    }

    /// <summary>
    /// One bulk measurement (<see cref="MeasureBulk"/>): <paramref name="flows"/> threads, each a
    /// connection to <paramref name="port"/> (discard: send; source: receive) of an equal share of
    /// <paramref name="bytes"/>. Gbit/s, bytes allocated per packet, processor time per GB (µs;
    /// null without <paramref name="cpu"/>, the warm-up's).
    /// </summary>
    private static (double Gbps, double BytesPerPacket, CpuTime? PerGB) BulkTransfer(
        IPAddress target, int port, long bytes, int flows, Func<long> packets, CpuMeter? cpu, Measurement m)
    {
        var shares = Enumerable.Range(0, flows).Select(i => bytes / flows + (i < bytes % flows ? 1 : 0)).ToArray();
        using var start = new Barrier(flows + 1);
        var failures = new Exception?[flows];
        var threads = Enumerable.Range(0, flows).Select(i => new Thread(() =>
        {
            try
            {
                OneFlow(i, shares[i], start);
            }
            catch (Exception e)
            {
                failures[i] = e;
            }
        })
        { IsBackground = true }).ToList();
        threads.ForEach(t => t.Start());
        long allocated = GC.GetTotalAllocatedBytes(true), packetsBefore = packets();
        cpu?.Start();
        var clock = Stopwatch.StartNew();
        start.SignalAndWait();
        threads.ForEach(t => t.Join());
        var elapsed = clock.Elapsed;
        var time = cpu?.Stop();
        allocated = GC.GetTotalAllocatedBytes(true) - allocated;
        if (failures.FirstOrDefault(e => e is not null) is { } failure)
            throw new InvalidOperationException($"bulk transfer with {target}:{port} failed: {failure.Message}", failure);
        if (time is { } t)
            m.Measured += t;
        var count = Math.Max(1, packets() - packetsBefore);
        return (bytes * 8 / elapsed.TotalSeconds / 1e9, (double)allocated / count, time is { } c ? PerUnit(c, bytes / 1e9) : null);

        void OneFlow(int flow, long share, Barrier start)
        {
            // First of all, so that a flow that fails cannot leave the others waiting.
            start.SignalAndWait();
            var block = FlowBlock(flow);
            using var s = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            s.ReceiveTimeout = s.SendTimeout = 60_000;
            s.Connect(new IPEndPoint(target, port));
            if (port == DiscardPort)
            {
                for (var left = share; left > 0;)
                {
                    var n = (int)Math.Min(left, block.Length);
                    s.Send(block, 0, n, SocketFlags.None);
                    left -= n;
                }
                s.Shutdown(SocketShutdown.Send);
                while (s.Receive(block) > 0)
                {
                }
            }
            else
            {
                s.Send(Encoding.ASCII.GetBytes($"{share}\n"));
                long received = 0;
                int n;
                while ((n = s.Receive(block)) > 0)
                    received += n;
                if (received != share)
                    throw new InvalidOperationException($"asked {target}:{SourcePort} for {share} bytes, got {received}");
            }
        }
    }

    /// <summary>Each bulk flow's buffer, by flow number, kept for the process's life: a transfer allocates no buffer, so the allocation figure is the stack's.</summary>
    private static readonly byte[]?[] FlowBlocks = new byte[]?[64];

    private static byte[] FlowBlock(int flow) => FlowBlocks[flow] ??= new byte[BulkBlock];

    /// <summary><paramref name="time"/> divided by <paramref name="units"/>.</summary>
    private static CpuTime? PerUnit(CpuTime time, double units) =>
        units > 0 ? new CpuTime(time.Processes / units, time.Machine / units) : null;

    /// <summary>
    /// TCP ping-pong on one connection to an echo: 1 byte out, wait for the 1 byte back, with
    /// Nagle off (the client's small writes go out at once).
    /// </summary>
    private static void MeasureTcpRoundTrip(IPEndPoint target, TimeSpan duration, CpuMeter cpu, Measurement m)
    {
        using var s = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        s.ReceiveTimeout = s.SendTimeout = 5_000;
        s.Connect(target);
        var one = new byte[1];
        void Exchange()
        {
            s.Send(one);
            if (s.Receive(one) != 1)
                throw new InvalidOperationException($"the TCP echo at {target} closed during the ping-pong");
        }
        // 200 exchanges at least, then until the JIT has settled (half a second at least).
        var settling = new JitSettling(TimeSpan.FromSeconds(0.5), MaxWarmUp);
        for (var i = 0; i < 200 || !settling.Settled(); i++)
            Exchange();
        var rtts = new List<long>(1 << 16);
        cpu.Start();
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < duration)
        {
            var start = Stopwatch.GetTimestamp();
            Exchange();
            rtts.Add(Stopwatch.GetTimestamp() - start);
        }
        var time = cpu.Stop();
        m.Measured += time;
        m.TcpRoundTripCpu = PerUnit(time, rtts.Count);
        s.Shutdown(SocketShutdown.Send);
        rtts.Sort();
        m.TcpP50 = Percentile(rtts, 0.50);
        m.TcpP99 = Percentile(rtts, 0.99);
        m.TcpSamples = rtts.Count;
    }

    /// <summary>The ping-pong of <see cref="MeasureTcpRoundTrip"/> with a stack connection as the client.</summary>
    private static async Task MeasureStackClientRoundTripAsync(NetworkStack stack, IPEndPoint target, TimeSpan duration, CpuMeter cpu, Measurement m)
    {
        await using var c = await stack.ConnectTcpAsync(target);
        var one = new byte[1];
        async Task Exchange()
        {
            await c.WriteAsync(one);
            if (await c.ReadAsync(one) != 1)
                throw new InvalidOperationException($"the kernel TCP echo at {target} closed during the ping-pong");
        }
        var settling = new JitSettling(TimeSpan.FromSeconds(0.5), MaxWarmUp);
        for (var i = 0; i < 200 || !settling.Settled(); i++)
            await Exchange();
        var rtts = new List<long>(1 << 16);
        cpu.Start();
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < duration)
        {
            var start = Stopwatch.GetTimestamp();
            await Exchange();
            rtts.Add(Stopwatch.GetTimestamp() - start);
        }
        var time = cpu.Stop();
        m.Measured += time;
        m.ClientRoundTripCpu = PerUnit(time, rtts.Count);
        rtts.Sort();
        m.ClientP50 = Percentile(rtts, 0.50);
        m.ClientP99 = Percentile(rtts, 0.99);
    }

    /// <summary>
    /// Short connections from <paramref name="clients"/> threads: connect, send 1 byte, receive
    /// it, close. With <paramref name="serverCloses"/> false the client closes first (to the echo
    /// at <paramref name="target"/>; the client's side holds the TIME-WAIT); with true the server
    /// closes after its answer (HTTP/1.0 style, to the answer-once service; the server holds the
    /// TIME-WAIT), and the client reads to the end of the stream before it closes. Connections
    /// completed per second (at most <see cref="MaxConnections"/> in all), processor time per
    /// connection, and connections that failed (warm-up included).
    /// </summary>
    /// <remarks>
    /// Each connection costs the client only its own system calls (socket, connect, send, recv,
    /// close): no socket options. Nagle cannot hold the single byte (nothing is unacknowledged
    /// when it goes), and instead of a receive timeout per socket a watchdog (this thread) closes
    /// the socket of a client that has made no progress for <see cref="ConnectionStall"/>, which
    /// ends its blocked call with an error: a silent server fails the measurement, it cannot
    /// hang it. A connection that fails (refused, reset, closed without an answer) is counted and
    /// the client goes on with the next.
    /// </remarks>
    private static (double PerSecond, CpuTime? Cpu, long Failed) MeasureConnections(
        IPEndPoint target, bool serverCloses, TimeSpan duration, int clients, CpuMeter cpu, Measurement m)
    {
        // Warm-up: the listener's accept path and the service's first connection, then the same
        // load as the measurement until the JIT has settled, so that the runtime has compiled the
        // connection paths (client, service and stack) at full optimization before the clock
        // starts. With 20 connections only, the stack's paths ran as unoptimized and
        // instrumented code through most of the measurement (perf: the loop thread in
        // QuickJitted/InstrumentedTier frames, the JIT's own thread at up to 60% of a core); a
        // fixed 2 s still left the JIT compiling the stack's paths for 4–6 s more.
        var warmUp = new ConnectionClient(target, serverCloses);
        warmUp.Start(() => warmUp.Completed < 20);
        if (!Watch([warmUp], TimeSpan.FromSeconds(30)) || warmUp.Completed == 0)
            throw new InvalidOperationException($"short connection to {target} failed: {warmUp.LastFailure?.Message ?? "no progress"}", warmUp.LastFailure);
        var settling = new JitSettling(ConnectionWarmUp, MaxWarmUp);
        long warmUpStarted = 0;
        var warmUpThreads = Enumerable.Range(0, clients).Select(_ => new ConnectionClient(target, serverCloses)).ToList();
        warmUpThreads.ForEach(t => t.Start(() => !settling.Settled() && (_timeWaitReuse || Interlocked.Increment(ref warmUpStarted) <= MaxConnections / 2)));
        if (!Watch(warmUpThreads, MaxWarmUp + TimeSpan.FromSeconds(30)))
            throw new InvalidOperationException($"short connections to {target} stalled in the warm-up: {warmUpThreads.FirstOrDefault(t => t.LastFailure is not null)?.LastFailure?.Message ?? "no progress"}");
        long started = 0;
        cpu.Start();
        var clock = Stopwatch.StartNew();
        var threads = Enumerable.Range(0, clients).Select(_ => new ConnectionClient(target, serverCloses)).ToList();
        threads.ForEach(t => t.Start(() => clock.Elapsed < duration && Interlocked.Increment(ref started) <= MaxConnections));
        bool ok = Watch(threads, duration + TimeSpan.FromSeconds(30));
        var elapsed = clock.Elapsed;
        var time = cpu.Stop();
        m.Measured += time;
        if (!ok)
            throw new InvalidOperationException($"short connections to {target} stalled: {threads.FirstOrDefault(t => t.LastFailure is not null)?.LastFailure?.Message ?? "no progress"}");
        long completed = threads.Sum(t => t.Completed);
        long failed = warmUp.Failed + warmUpThreads.Sum(t => t.Failed) + threads.Sum(t => t.Failed);
        var failure = threads.Concat(warmUpThreads).Append(warmUp).FirstOrDefault(t => t.LastFailure is not null)?.LastFailure;
        if (failure is not null)
            Console.Error.WriteLine($"{Name}: {failed} short connection(s) to {target} failed; the last: {failure.GetType().Name}: {failure.Message}");
        return (completed / elapsed.TotalSeconds, PerUnit(time, completed), failed);
    }

    /// <summary>How long a connection client may go without completing a connection before the watchdog closes its socket.</summary>
    private static readonly TimeSpan ConnectionStall = TimeSpan.FromSeconds(5);

    /// <summary>
    /// Waits for every client to finish, closing the current socket of any that completes no
    /// connection for <see cref="ConnectionStall"/>; false when one stalled or all together took
    /// longer than <paramref name="limit"/>.
    /// </summary>
    private static bool Watch(List<ConnectionClient> clients, TimeSpan limit)
    {
        var clock = Stopwatch.StartNew();
        var seen = clients.Select(c => (Completed: -1L, Since: TimeSpan.Zero)).ToArray();
        bool ok = true;
        while (true)
        {
            bool running = false;
            for (var i = 0; i < clients.Count; i++)
            {
                var c = clients[i];
                if (c.Thread.Join(0))
                    continue;
                running = true;
                long completed = c.Completed;
                if (completed != seen[i].Completed)
                    seen[i] = (completed, clock.Elapsed);
                else if (clock.Elapsed - seen[i].Since > ConnectionStall || clock.Elapsed > limit)
                {
                    ok = false;
                    c.Stop();
                }
            }
            if (!running)
                return ok;
            Thread.Sleep(50);
        }
    }

    /// <summary>One client thread of the connection measurement, opening connections one after another while told to.</summary>
    private sealed class ConnectionClient(IPEndPoint target, bool serverCloses)
    {
        private readonly object _gate = new();
        private Socket? _current;
        private volatile bool _stopped;
        private long _completed, _failed;

        /// <summary>The thread (started by <see cref="Start"/>).</summary>
        public Thread Thread { get; private set; } = null!;

        /// <summary>Connections completed.</summary>
        public long Completed => Volatile.Read(ref _completed);

        /// <summary>Connections that failed.</summary>
        public long Failed => Volatile.Read(ref _failed);

        /// <summary>Why the last failed connection failed; null when none did.</summary>
        public Exception? LastFailure { get; private set; }

        /// <summary>Starts the thread: one connection after another while <paramref name="more"/> says so.</summary>
        public void Start(Func<bool> more)
        {
            Thread = new Thread(() =>
            {
                while (!_stopped && more())
                {
                    try
                    {
                        OneConnection();
                        Interlocked.Increment(ref _completed);
                    }
                    catch (Exception e) when (e is SocketException or InvalidOperationException or ObjectDisposedException)
                    {
                        Interlocked.Increment(ref _failed);
                        LastFailure = _stopped ? new TimeoutException($"no connection completed in {ConnectionStall.TotalSeconds:0} s", e) : e;
                    }
                }
            })
            { IsBackground = true };
            Thread.Start();
        }

        /// <summary>The watchdog's verdict: the current socket is closed, which ends a blocked call.</summary>
        public void Stop()
        {
            _stopped = true;
            lock (_gate)
                _current?.Dispose();
        }

        private void OneConnection()
        {
            using var s = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            lock (_gate)
            {
                if (_stopped)
                    throw new ObjectDisposedException(nameof(ConnectionClient));
                _current = s;
            }
            try
            {
                s.Connect(target);
                Span<byte> one = [42];
                s.Send(one);
                if (s.Receive(one) != 1)
                    throw new InvalidOperationException($"the TCP service at {target} closed without answering");
                // HTTP/1.0 style: the server closes after its answer; the client reads its FIN.
                if (serverCloses && s.Receive(one) != 0)
                    throw new InvalidOperationException($"the TCP service at {target} sent more than its answer");
            }
            finally
            {
                lock (_gate)
                    _current = null;
            }
        }
    }

    /// <summary>
    /// The usend case: <paramref name="send"/> has a sender send to a kernel socket here (the sink,
    /// bound at <paramref name="sinkAddress"/>) for a given time and returns how many datagrams it
    /// sent and how long that took; first a second of warm-up, then the measurement.
    /// </summary>
    private static void MeasureUdpSend(IPAddress sinkAddress, TimeSpan duration, CpuMeter cpu, Measurement m, Func<TimeSpan, IPEndPoint, (long Sent, TimeSpan Took)> send)
    {
        using var sink = new Socket(sinkAddress.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        sink.ReceiveBufferSize = 4 << 20;
        sink.Bind(new IPEndPoint(sinkAddress, 0));
        var local = (IPEndPoint)sink.LocalEndPoint!;
        long received = 0;
        var reader = new Thread(() =>
        {
            var buffer = new byte[65536];
            try
            {
                while (true)
                {
                    sink.Receive(buffer);
                    Interlocked.Increment(ref received);
                }
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                // Closed: the measurement is over.
            }
        })
        { IsBackground = true };
        reader.Start();
        send(TimeSpan.FromSeconds(1), local);
        Thread.Sleep(200);
        long before = Interlocked.Read(ref received);
        cpu.Start();
        var (sent, took) = send(duration, local);
        // What is still queued in the socket is read, then counted.
        Thread.Sleep(200);
        var time = cpu.Stop();
        m.Measured += time;
        long got = Interlocked.Read(ref received) - before;
        m.SendCpuPerDatagram = PerUnit(time, got);
        m.SendReceivedPerSecond = got / took.TotalSeconds;
        m.SendLost = sent > 0 ? Math.Max(0, sent - got) / (double)sent : null;
    }

    /// <summary>The usend case's stack sender: segmented sends from a stack UDP socket, one at a time.</summary>
    private static (long Sent, TimeSpan Took) StackUdpSend(NetworkStack stack, TimeSpan time, IPEndPoint sink)
    {
        using var socket = stack.BindUdp(new IPEndPoint(IPAddress.Any, 0));
        var data = new byte[SegmentSize * SegmentsPerSend];
        long sent = 0;
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < time)
        {
            socket.SendToAsync(data, sink, SegmentSize).AsTask().GetAwaiter().GetResult();
            sent += SegmentsPerSend;
        }
        return (sent, clock.Elapsed);
    }

    private static TimeSpan Percentile(List<long> sorted, double p) =>
        Stopwatch.GetElapsedTime(0, sorted[Math.Min(sorted.Count - 1, (int)(p * sorted.Count))]);

    /// <summary>UDP latency, then rate, against one echo.</summary>
    private static void MeasureUdp(IPEndPoint target, TimeSpan duration, CpuMeter cpu, Measurement m)
    {
        using var socket = new Socket(target.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        socket.Connect(target);
        var payload = new byte[DatagramSize];
        var reply = new byte[2048];
        long lost = 0;

        // Warm-up: neighbour resolution, JIT, first-packet paths. The echo must answer by now.
        for (var i = 0; i < 200; i++)
        {
            if (!RoundTrip(socket, payload, reply, i, TimeSpan.FromSeconds(i == 0 ? 5 : 1)))
                throw new InvalidOperationException($"the echo at {target} does not answer");
        }

        // Latency: one datagram outstanding, each carrying its sequence number.
        var rtts = new List<long>(1 << 16);
        cpu.Start();
        var clock = Stopwatch.StartNew();
        for (long seq = 1000; clock.Elapsed < duration; seq++)
        {
            var start = Stopwatch.GetTimestamp();
            if (RoundTrip(socket, payload, reply, seq, TimeSpan.FromMilliseconds(200)))
                rtts.Add(Stopwatch.GetTimestamp() - start);
            else
                lost++;
        }
        var latencyTime = cpu.Stop();
        m.Measured += latencyTime;
        if (rtts.Count == 0)
            throw new InvalidOperationException($"no round trip to {target} completed");
        m.UdpRoundTripCpu = PerUnit(latencyTime, rtts.Count);
        rtts.Sort();

        // Rate: keep up to Window datagrams in flight; a reply lets the next one go. A silence
        // of 200 ms writes the whole window off as lost, so one drop cannot stall the flood.
        socket.ReceiveTimeout = 200;
        long received = 0;
        var inFlight = 0;
        cpu.Start();
        clock.Restart();
        while (clock.Elapsed < duration)
        {
            while (inFlight < Window)
            {
                socket.Send(payload);
                inFlight++;
            }
            try
            {
                socket.Receive(reply);
                received++;
                inFlight--;
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.TimedOut or SocketError.WouldBlock)
            {
                lost += inFlight;
                inFlight = 0;
            }
        }
        var rate = received / clock.Elapsed.TotalSeconds;
        var rateTime = cpu.Stop();
        m.Measured += rateTime;
        m.UdpDatagramCpu = PerUnit(rateTime, received);
        // Drain the stragglers so they cannot count in anyone's next measurement.
        socket.ReceiveTimeout = 50;
        try
        {
            while (inFlight-- > 0)
                socket.Receive(reply);
        }
        catch (SocketException)
        {
        }
        m.P50 = Percentile(rtts, 0.50);
        m.P99 = Percentile(rtts, 0.99);
        m.Samples = rtts.Count;
        m.DatagramsPerSecond = rate;
        m.Lost = lost;
    }

    /// <summary>One echo with sequence number <paramref name="seq"/>; false when it did not come back in time.</summary>
    private static bool RoundTrip(Socket socket, byte[] payload, byte[] reply, long seq, TimeSpan timeout)
    {
        BitConverter.TryWriteBytes(payload, seq);
        socket.ReceiveTimeout = (int)timeout.TotalMilliseconds;
        socket.Send(payload);
        while (true)
        {
            int n;
            try
            {
                n = socket.Receive(reply);
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.TimedOut or SocketError.WouldBlock)
            {
                return false;
            }
            // An older, late reply: skip it and keep waiting for ours.
            if (n == payload.Length && BitConverter.ToInt64(reply, 0) == seq)
                return true;
        }
    }
}
