using System.Net.NetworkInformation;
using NetStack.Core.Ip;
using NetStack.Core.Stack;
using NetStack.Core.Wire;
using NetStack.Device;
using NetStack.Diagnostics;
using NetStack.Engine;

namespace NetStack;

// The engine loop: commands posted from other threads, the loop that reads the device and
// runs the timers, and the burst of wakes.
public sealed partial class NetworkStack
{
    // ------------------------------------------------------------------------------------------
    // Commands
    // ------------------------------------------------------------------------------------------

    // wake false: queue the command without waking an idle loop (it runs at the loop's next
    // pass: a packet, a timer, another command); for work nobody waits for.
    private void Post(Action run, Action<Exception>? abort, bool wake = true)
    {
        lock (_commandGate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _commands.Enqueue(new Command(run, abort));
            wake &= _loopIdle;
            if (wake)
                _loopIdle = false;
        }
        // A busy loop drains the queue before it next waits (EnterIdle sees the command).
        if (wake)
            _device.Wake();
    }

    // Queues a datagram for the loop to send, as Post does a command; false when the stack is
    // disposed (the caller still owns the buffer then).
    private bool TryPostDatagram(in OutgoingDatagram datagram)
    {
        bool wake;
        lock (_commandGate)
        {
            if (_disposed)
                return false;
            _commands.Enqueue(new Command(null, null, datagram));
            wake = _loopIdle;
            if (wake)
                _loopIdle = false;
        }
        if (wake)
            _device.Wake();
        return true;
    }

    /// <summary>Wakes the loop if it waits idle, so that it runs the commands already queued.</summary>
    internal void WakeLoop()
    {
        bool wake;
        lock (_commandGate)
        {
            if (_disposed)
                return;
            wake = _loopIdle;
            _loopIdle = false;
        }
        if (wake)
            _device.Wake();
    }

    // The loop is about to wait in the device read: true when it may (no command is queued, and
    // from now on a Post wakes it), false when it must only poll.
    private bool EnterIdle()
    {
        lock (_commandGate)
        {
            if (_commands.Count > 0 || HasHandoffs)
                return false;
            _loopIdle = true;
            return true;
        }
    }

    private void DrainCommands()
    {
        Queue<Command> batch;
        lock (_commandGate)
        {
            if (_commands.Count == 0)
                return;
            batch = _commands;
            _commands = _spareCommands;
            _spareCommands = batch;
        }
        while (batch.TryDequeue(out var command))
        {
            try
            {
                if (command.Run is { } run)
                    run();
                else
                    SendQueuedDatagram(command.Datagram);
            }
            catch (Exception e)
            {
                _statistics.Increment("engine.command-error");
                command.Abort?.Invoke(e);
            }
        }
    }

    /// <summary>
    /// Hands the engine a packet as if the device had read it (a copy is taken): the test hook for
    /// injecting garbage or crafted packets into a running stack. Internal: plumbing for the tests,
    /// not part of the everyday surface.
    /// </summary>
    /// <param name="packet">The packet's bytes (anything at all).</param>
    /// <exception cref="ObjectDisposedException">The stack is disposed.</exception>
    internal void InjectPacket(ReadOnlySpan<byte> packet)
    {
        var copy = packet.ToArray();
        Post(() => ProcessPacket(copy, default), null);
    }

    // ------------------------------------------------------------------------------------------
    // The loop
    // ------------------------------------------------------------------------------------------

    private void Loop()
    {
        int deviceErrors = 0;
        // "engine.loop.allocated-bytes": what this thread has allocated since it started (the
        // core's immutable TCP records, for the most part); reading the thread's own allocation
        // counter costs a few nanoseconds.
        long allocatedAtStart = GC.GetAllocatedBytesForCurrentThread();
        var inline = InlineCompletions.EnterEngineThread(Options.UnsafeInlineCompletions, _statistics,
            e => _log.InlineCompletionFailed(InterfaceName, e));
        while (!_stopping)
        {
            _statistics.Set("engine.loop.allocated-bytes", GC.GetAllocatedBytesForCurrentThread() - allocatedAtStart);
            try
            {
                RunTimers();
                DrainCommands();
                if (_stopping)
                    break;
                if (_handoffs is not null)
                    DrainHandoffs();
                DrainLooped();
                int wait = HasLooped ? 0 : WaitMilliseconds();
                // A burst: packets the device already holds are read without waiting, and the
                // readers and writers they concern are woken once at its end (or every
                // MaxBurstPackets), not once per packet: one thread-pool dispatch per burst.
                VirtioNetHeader header = default;
                bool read = TryReadPacket(0, out var packet, out header);
                if (!read)
                {
                    FlushWakes();
                    if (inline is { Pending: true })
                    {
                        inline.Run();
                        // The code run may have queued work (a reply's segments, a command).
                        wait = 0;
                    }
                    if (wait > 0 && EnterIdle())
                        read = TryReadPacket(wait, out packet, out header);
                }
                else if (++_burstPackets >= MaxBurstPackets)
                {
                    FlushWakes();
                    inline?.Run();
                }
                Volatile.Write(ref _loopIdle, false);
                if (_autoconfiguring is not null)
                    SyncAutoconfigured();
                if (_dhcpLink is not null)
                    SyncDhcp();
                if (read)
                {
                    deviceErrors = 0;
                    _deviceRead.Increment();
                    Interlocked.Add(ref _bytesRead, packet.Length);
                    if (_group is null)
                        ProcessPacket(packet, header);
                    else
                        ProcessQueued(packet, header);
                }
            }
            catch (ObjectDisposedException) when (_stopping)
            {
                break;
            }
            catch (Exception e)
            {
                // A device failure (the interface deleted under us): count it and do not spin.
                _statistics.Increment("engine.loop-error");
                // Logged the first time and then at 2, 4, 8, ... in a row.
                if (System.Numerics.BitOperations.IsPow2(deviceErrors + 1))
                    _log.DeviceError(InterfaceName, deviceErrors + 1, e);
                if (++deviceErrors > 3)
                    Thread.Sleep(Math.Min(1000, 10 * deviceErrors));
            }
        }
        // Completions recorded before the loop saw it should stop (or by a Dispose called from
        // code it ran): their awaiting code still runs, and fails on the disposed stack.
        while (inline is { Pending: true })
            inline.Run();
    }

    private bool TryReadPacket(int wait, out ReadOnlySpan<byte> packet, out VirtioNetHeader header)
    {
        header = default;
        int length;
        bool read;
        if (_inPlace is not null)
        {
            // io_uring: the packet stays where the kernel put it, until the next read.
            read = _inPlace.TryReadInPlace(wait, out packet, out header);
            if (_offload is null)
                header = default;
            return read;
        }
        read = _offload is not null
            ? _offload.TryReadWithHeader(_receiveBuffer, wait, out length, out header)
            : _device.TryRead(_receiveBuffer, wait, out length);
        packet = _receiveBuffer.AsSpan(0, length);
        return read;
    }

    // The TUN device itself when the loop reads it directly in io_uring mode (nothing wraps it).
    private readonly TunDevice? _inPlace;

    // Most packets a burst may hold back its wakes for (about 23 KB of data at MTU 1500).
    private const int MaxBurstPackets = 16;
    private int _burstPackets;
    // Connections whose waiting reader or writer has something to do (loop-only).
    private readonly List<TcpConnection> _pendingWakes = [];

    /// <summary>Asks the loop to wake <paramref name="connection"/>'s waiting calls at the end of the burst.</summary>
    internal void DeferWake(TcpConnection connection) => _pendingWakes.Add(connection);

    private void FlushWakes()
    {
        _burstPackets = 0;
        if (_pendingWakes.Count == 0)
            return;
        foreach (var connection in _pendingWakes)
            connection.FlushWakes();
        _pendingWakes.Clear();
    }

    private int WaitMilliseconds()
    {
        long now = Now();
        long next = long.MaxValue;
        var deadline = IpLayer.nextDeadline(_ip);
        if (deadline.IsSome)
            next = deadline.Value;
        foreach (var ping in _pings.Values)
            next = Math.Min(next, ping.Deadline);
        next = Math.Min(next, NextTcpDeadline());
        next = Math.Min(next, NextForwardDeadline());
        next = Math.Min(next, NextLinkDeadline());
        next = Math.Min(next, NextMulticastDeadline());
        if (next == long.MaxValue)
            return MaxWaitMilliseconds;
        long wait = (next - now + 999) / 1000;
        return (int)Math.Clamp(wait, 0, MaxWaitMilliseconds);
    }

    private void RunTimers()
    {
        long now = Now();
        RunLinkTimers(now);
        RunTcpTimers(now);
        RunForwardTimers(now);
        RunMulticastTimers(now);
        SweepIdleRings(now);
        var deadline = IpLayer.nextDeadline(_ip);
        if (deadline.IsSome && deadline.Value <= now)
        {
            var (state, abandoned) = IpLayer.expire(now, _ip);
            _ip = state;
            foreach (var a in abandoned)
            {
                _statistics.Increment("ip.reassembly.timeout");
                if (a.FirstFragment.IsSome)
                {
                    int length = IpLayer.writeFirstFragment(a.Key, a.FirstFragment.Value, _fragmentBuffer);
                    SendError(OutgoingError.ReassemblyTimeExceeded, _fragmentBuffer.AsSpan(0, length), "icmp.error.sent.reassembly-time-exceeded");
                }
            }
        }
        if (_pings.Count > 0)
        {
            List<ushort>? expired = null;
            foreach (var (sequence, ping) in _pings)
            {
                if (ping.Deadline <= now)
                    (expired ??= []).Add(sequence);
            }
            if (expired is not null)
            {
                foreach (var sequence in expired)
                {
                    var ping = _pings[sequence];
                    _pings.Remove(sequence);
                    ping.Registration.Unregister();
                    _statistics.Increment("ping.timed-out");
                    ping.Completion.TrySetResult(new PingReply(IPStatus.TimedOut, ping.Destination, TimeSpan.Zero, 0));
                }
            }
        }
    }
}
