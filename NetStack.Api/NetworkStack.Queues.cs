using System.Buffers;
using System.Buffers.Binary;
using System.Collections.Concurrent;
using NetStack.Core.Wire;
using NetStack.Device;

namespace NetStack;

// A multi-queue TUN interface (NetStackOptions.Queues > 1): one engine per queue, each a
// NetworkStack of its own (thread, device descriptor, IP state, TCP endpoint table), sharing
// nothing on the hot path. Queue 0's engine is the stack the caller holds; it keeps everything
// that is not TCP. docs/multiqueue.md.
public sealed partial class NetworkStack
{
    /// <summary>The most queues <see cref="NetStackOptions.Queues"/> may ask for.</summary>
    public const int MaxQueues = 16;

    // The engines of one multi-queue interface, by queue, and what they share (rarely written).
    private sealed class QueueGroup(int count)
    {
        // Written once each while the stack starts (an engine not there yet keeps its packets).
        public readonly NetworkStack?[] Engines = new NetworkStack?[count];
        public readonly int Count = count;
        // Connects spread round-robin over the engines.
        public int NextConnect;

        // Listeners per port of the ephemeral range: a segment to such a port belongs to the
        // engine that received it (the kernel's choice for the peer's connection), not to the
        // engine `port % Count` as for the ports our connects draw.
        private readonly int[] _listened = new int[EphemeralPortLast - EphemeralPortFirst + 1];

        public bool IsListened(int port) => Volatile.Read(ref _listened[port - EphemeralPortFirst]) != 0;

        public void Listen(int port)
        {
            if (port >= EphemeralPortFirst)
                Interlocked.Increment(ref _listened[port - EphemeralPortFirst]);
        }

        public void Unlisten(int port)
        {
            if (port >= EphemeralPortFirst)
                Interlocked.Decrement(ref _listened[port - EphemeralPortFirst]);
        }

        public NetworkStack? Engine(int queue) => Volatile.Read(ref Engines[queue]);
    }

    // A packet one engine read and handed to another (a pooled copy).
    private readonly record struct Handoff(byte[] Buffer, int Length, VirtioNetHeader Header);

    // Null for a single-queue stack; else the group and this engine's queue.
    private readonly QueueGroup? _group;
    private readonly int _queue;
    private readonly ConcurrentQueue<Handoff>? _handoffs;
    private readonly NetStackStatistics.Counter? _queueRead, _handoffSent, _handoffReceived;

    /// <summary>The queues of the TUN interface, each with its own engine loop (<see cref="NetStackOptions.Queues"/>).</summary>
    public int Queues => _group?.Count ?? 1;

    private void InitQueues(out NetStackStatistics.Counter? queueRead, out NetStackStatistics.Counter? handoffSent,
        out NetStackStatistics.Counter? handoffReceived)
    {
        queueRead = handoffSent = handoffReceived = null;
        if (_group is null)
            return;
        queueRead = _statistics.Handle($"device.read.queue{_queue}");
        handoffSent = _statistics.Handle("engine.queue.handoff");
        handoffReceived = _statistics.Handle("engine.queue.handoff-received");
    }

    // Opens the interface's queues, configures the kernel side once and starts one engine per
    // queue; queue 0's is returned. The caller disposes `link` and the devices when this throws.
    private static NetworkStack StartQueues(NetStackOptions options, TunDevice[] devices, KernelLink? link)
    {
        var group = new QueueGroup(devices.Length);
        var started = new List<NetworkStack>();
        try
        {
            for (int q = 0; q < devices.Length; q++)
            {
                var engine = StartOnDevice(options, devices[q], q == 0 ? link : null, group, q);
                started.Add(engine);
                Volatile.Write(ref group.Engines[q], engine);
            }
        }
        catch
        {
            // Queue 0's engine disposes the link; each engine its device.
            foreach (var engine in started)
                engine.Dispose();
            throw;
        }
        var primary = started[0];
        primary._statistics.Parts = [.. started.Skip(1).Select(s => s._statistics)];
        return primary;
    }

    // The engine `ConnectTcpAsync` opens a connection on: the one whose ephemeral ports carry
    // the fixed local port, else the next round-robin.
    private NetworkStack ConnectEngine(int localPort)
    {
        if (_group is not { } group)
            return this;
        int queue = localPort != 0 ? localPort % group.Count : (int)((uint)Interlocked.Increment(ref group.NextConnect) % (uint)group.Count);
        return group.Engine(queue) ?? this;
    }

    // The other engines (queues 1..), for the calls that reach every engine (listen, dispose).
    private IEnumerable<NetworkStack> OtherEngines()
    {
        if (_group is not { } group || _queue != 0)
            yield break;
        for (int q = 1; q < group.Count; q++)
        {
            if (group.Engine(q) is { } engine)
                yield return engine;
        }
    }

    // A packet this engine read from its queue: processed here, or handed to its owner.
    private void ProcessQueued(ReadOnlySpan<byte> packet, in VirtioNetHeader header)
    {
        _queueRead!.Increment();
        int owner = OwnerOf(packet);
        if (owner < 0 || _group!.Engine(owner) is not { } target)
        {
            ProcessPacket(packet, header);
            return;
        }
        HandTo(target, packet, header);
    }

    // A pooled copy of `packet` for `target`'s loop, which it wakes if idle.
    private void HandTo(NetworkStack target, ReadOnlySpan<byte> packet, in VirtioNetHeader header)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(packet.Length);
        packet.CopyTo(buffer);
        target._handoffs!.Enqueue(new Handoff(buffer, packet.Length, header));
        _handoffSent!.Increment();
        target.WakeLoop();
    }

    // An ICMP error quoting one of our TCP segments, read by queue 0 (every ICMP packet is
    // queue 0's): the connection of the quoted 4-tuple may live on any engine. Our local port
    // says which when a connect drew it (the ephemeral range, not listened: the engine
    // `port % Queues`): the packet is handed there, and true. Otherwise (an accepted connection
    // lives on the engine that read its SYN, which the port does not tell) a copy goes to every
    // other engine and queue 0 looks in its own table too (false): only the owner's table has
    // the 4-tuple, the others ignore it as for a connection that is gone. ICMP errors are rare,
    // so the copies cost nothing that matters.
    private bool HandOffTcpIcmpError(ReadOnlySpan<byte> packet, int localPort)
    {
        var group = _group!;
        if (localPort >= EphemeralPortFirst && !group.IsListened(localPort))
        {
            int owner = localPort % group.Count;
            if (owner == _queue || group.Engine(owner) is not { } target)
                return false;
            HandTo(target, packet, VirtioNetHeader.None);
            return true;
        }
        for (int q = 1; q < group.Count; q++)
        {
            if (group.Engine(q) is { } engine)
                HandTo(engine, packet, VirtioNetHeader.None);
        }
        return false;
    }

    // The queue whose engine owns the packet when another than this one, else -1. TCP to a port
    // of the ephemeral range no listener has: the engine `port % Queues`, which drew it. Other
    // TCP: this engine (the kernel chose this queue for the peer's connection, and keeps
    // choosing it: its flow hash, or the queue our answers were written on). Everything else
    // (UDP, ICMP, fragments, IPv6 extension headers, anything unparsed): queue 0.
    private int OwnerOf(ReadOnlySpan<byte> packet)
    {
        int primary = _queue == 0 ? -1 : 0;
        if (packet.Length < 20)
            return primary;
        int transport;
        switch (packet[0] >> 4)
        {
            case 4:
                transport = (packet[0] & 0x0F) * 4;
                // Protocol 6, and neither More Fragments nor an offset (RFC 791).
                if (packet[9] != 6 || transport < 20 || (BinaryPrimitives.ReadUInt16BigEndian(packet[6..]) & 0x3FFF) != 0)
                    return primary;
                break;
            case 6:
                // Next Header TCP straight after the fixed header (RFC 8200 §3).
                if (packet.Length < 40 || packet[6] != 6)
                    return primary;
                transport = 40;
                break;
            default:
                return primary;
        }
        if (packet.Length < transport + 4)
            return primary;
        int port = BinaryPrimitives.ReadUInt16BigEndian(packet[(transport + 2)..]);
        var group = _group!;
        if (port < EphemeralPortFirst || group.IsListened(port))
            return -1;
        int owner = port % group.Count;
        return owner == _queue ? -1 : owner;
    }

    // The packets other engines handed to this one (loop thread).
    private void DrainHandoffs()
    {
        while (_handoffs!.TryDequeue(out var handoff))
        {
            _handoffReceived!.Increment();
            ProcessPacket(handoff.Buffer.AsSpan(0, handoff.Length), handoff.Header);
            ArrayPool<byte>.Shared.Return(handoff.Buffer);
        }
    }

    private bool HasHandoffs => _handoffs is { IsEmpty: false };
}
