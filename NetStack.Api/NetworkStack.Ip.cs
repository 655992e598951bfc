using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using NetStack.Core.Ip;
using NetStack.Core.Stack;
using NetStack.Core.Wire;
using NetStack.Device;
using NetStack.Diagnostics;
using NetStack.Engine;

namespace NetStack;

// IP receive dispatch, sending whole packets (fragmented for the path MTU) and ICMP errors,
// ICMP errors and echo replies received, and ping.
public sealed partial class NetworkStack
{
    private void ProcessPacket(ReadOnlySpan<byte> packet, in VirtioNetHeader header, bool looped = false)
    {
        try
        {
            Dispatch(packet, header, looped);
        }
        catch (TunDeviceException)
        {
            // Writing the answer failed (the link is down, the interface is going away).
            _statistics.Increment("device.write-error");
        }
        catch (Exception)
        {
            // A bug, not the peer's fault; but the peer must not be able to stop the loop with it.
            _statistics.Increment("drop.exception");
        }
    }

    private void Dispatch(ReadOnlySpan<byte> packet, in VirtioNetHeader header, bool looped)
    {
        long now = Now();
        if (!packet.IsEmpty && (packet[0] >> 4) is 4 or 6)
            _statistics.Increment((packet[0] >> 4) == 6 ? "ipv6.received" : "ipv4.received");
        if (header.IsSegmented)
            _statistics.Increment("offload.gso.received");
        // A partial (NEEDS_CSUM) or kernel-verified (DATA_VALID) transport checksum is not
        // checked again; a super-segment goes to TCP whole, however long.
        long evicted = _ip.ReassemblyEvicted;
        var (state, r) = looped
            ? IpLayer.receiveLooped(now, packet, _ip)
            : IpLayer.receiveChecked(now, packet, header.TransportChecksumTrusted, _ip);
        _ip = state;
        if (state.ReassemblyEvicted != evicted)
            _statistics.Increment("ip.reassembly.evicted", state.ReassemblyEvicted - evicted);
        switch (r.Kind)
        {
            case ReceivedKind.Dropped:
                {
                    var reason = r.DropCounter;
                    _statistics.Increment(reason);
                    _dropLog.Dropped(_log, reason, now);
                    break;
                }
            case ReceivedKind.FragmentHeld:
                _statistics.Increment("ip.fragment.held");
                break;
            case ReceivedKind.EchoRequest:
                {
                    // To another address in any-destination mode: the echo forwarder's, if any.
                    if (r.Foreign && OfferEcho(packet, r))
                        break;
                    var data = IpLayer.slice(packet, r.Payload);
                    int length = IpLayer.writeEchoReply(r.Destination, r.Source, r.Echo.Identifier, r.Echo.Sequence, NextIdentification(), data, _packetBuffer);
                    SendPacket(length, r.Source, now);
                    _statistics.Increment("icmp.echo.replied");
                    break;
                }
            case ReceivedKind.EchoReply:
                OnEchoReply(r, now);
                break;
            case ReceivedKind.UdpDatagram:
                OnUdp(packet, r, header.Segmentation == VirtioGsoType.UdpL4 ? header.GsoSize : 0);
                break;
            case ReceivedKind.IcmpError:
                OnIcmpError(packet, r);
                break;
            case ReceivedKind.TcpSegment:
                OnTcp(packet, r, now);
                break;
            case ReceivedKind.GroupMessage:
                OnGroupMessage(packet, r, now);
                break;
        }
    }

    private ushort NextIdentification() => _ipIds.Next();

    /// <summary>Writes the whole packet in _packetBuffer to the device, cut for the path MTU.</summary>
    private void SendPacket(int length, IpAddr destination, long now)
    {
        var packet = _packetBuffer.AsSpan(0, length);
        int mtu = IpLayer.pathMtu(now, destination, _ip);
        if (length <= mtu)
        {
            if (Output(packet))
            {
                _deviceWritten.Increment();
                Interlocked.Add(ref _bytesWritten, length);
            }
            return;
        }
        var plan = IpLayer.planFragments(packet, mtu, (uint)Random.Shared.Next());
        for (int i = 0; i < plan.Count; i++)
        {
            int n = IpLayer.writeFragment(plan, packet, i, _fragmentBuffer);
            if (Output(_fragmentBuffer.AsSpan(0, n)))
            {
                _deviceWritten.Increment();
                Interlocked.Add(ref _bytesWritten, n);
            }
        }
        _statistics.Increment("ip.fragments.sent", plan.Count);
    }

    private void SendError(OutgoingError error, ReadOnlySpan<byte> original, string sentCounter)
    {
        var (state, verdict, length) = IpLayer.tryWriteError(Now(), error, original, _packetBuffer, _ip);
        _ip = state;
        if (verdict == ErrorVerdict.Sent)
        {
            if (Output(_packetBuffer.AsSpan(0, length)))
            {
                _deviceWritten.Increment();
                Interlocked.Add(ref _bytesWritten, length);
            }
            _statistics.Increment(sentCounter);
        }
        else
        {
            _statistics.Increment(verdict switch
            {
                ErrorVerdict.RateLimited => "icmp.error.suppressed.rate-limited",
                ErrorVerdict.AboutIcmpError => "icmp.error.suppressed.about-icmp-error",
                ErrorVerdict.NotFirstFragment => "icmp.error.suppressed.not-first-fragment",
                ErrorVerdict.NotUnicastDestination => "icmp.error.suppressed.not-unicast-destination",
                ErrorVerdict.NotUnicastSource => "icmp.error.suppressed.not-unicast-source",
                ErrorVerdict.NoAddress => "icmp.error.suppressed.no-address",
                _ => "icmp.error.suppressed.malformed",
            });
        }
    }

    private void OnIcmpError(ReadOnlySpan<byte> packet, Received r)
    {
        _statistics.Increment("icmp.error.received");
        var error = r.Error;
        var quoted = error.Quoted;
        if (error.Kind == IcmpErrorKind.PacketTooBig)
            _statistics.Increment("icmp.error.packet-too-big");
        if (!quoted.PortsKnown && !quoted.EchoKnown)
            return;
        if (quoted.Protocol == IpProtocol.Icmp || quoted.Protocol == IpProtocol.Icmpv6)
        {
            if (quoted.EchoKnown && quoted.Echo.Identifier == _pingIdentifier && _pings.Remove(quoted.Echo.Sequence, out var ping))
            {
                ping.Registration.Unregister();
                var status = error.Kind switch
                {
                    IcmpErrorKind.PacketTooBig => IPStatus.PacketTooBig,
                    IcmpErrorKind.TimeExceeded => IPStatus.TtlExpired,
                    IcmpErrorKind.ParameterProblem => IPStatus.ParameterProblem,
                    _ => IPStatus.DestinationUnreachable,
                };
                ping.Completion.TrySetResult(new PingReply(status, r.Source.ToIPAddress(), TimeSpan.FromTicks((Now() - ping.SentAt) * 10), 0));
            }
            return;
        }
        if (quoted.Protocol == IpProtocol.Tcp)
        {
            // With several queues the connection may be another engine's (queue 0 reads every
            // ICMP packet): handed to it, or to every engine when the port does not say which.
            if (_group is not null && _queue == 0 && HandOffTcpIcmpError(packet, quoted.Ports.Source))
                return;
            // To the connection of the quoted 4-tuple; the core decides (Connection.handleIcmpInto).
            OnTcpIcmpError(r);
            return;
        }
        if (quoted.Protocol != IpProtocol.Udp)
            return;
        var socket = _udpTable.ForError(quoted.Source, quoted.Ports.Source)?.Owner as UdpSocket;
        if (socket is null && ReportToFlow(error))
            _statistics.Increment("udp.forward.icmp-error");
        else if (socket is null)
            _statistics.Increment("icmp.error.no-socket");
        else if (socket.ReportError(error.Kind, quoted.Destination, quoted.Ports.Destination))
            _statistics.Increment("udp.icmp-error.reported");
    }

    private void OnEchoReply(Received r, long now)
    {
        _statistics.Increment("icmp.echo-reply.received");
        if (r.Echo.Identifier != _pingIdentifier || !_pings.TryGetValue(r.Echo.Sequence, out var ping) || !ping.DestinationAddress.Equals(r.Source))
        {
            _statistics.Increment("icmp.echo-reply.unmatched");
            return;
        }
        _pings.Remove(r.Echo.Sequence);
        ping.Registration.Unregister();
        var rtt = TimeSpan.FromTicks((now - ping.SentAt) * 10);
        _meter?.RecordPingRtt(rtt);
        ping.Completion.TrySetResult(new PingReply(IPStatus.Success, ping.Destination, rtt, r.Payload.Length));
    }

    // ------------------------------------------------------------------------------------------
    // Ping
    // ------------------------------------------------------------------------------------------

    /// <summary>
    /// Sends an ICMP echo request (IPv4 or IPv6, by the destination's family) and waits for the
    /// reply: Success with the round-trip time, TimedOut, or the status an ICMP error says
    /// (DestinationUnreachable, PacketTooBig, TtlExpired, ParameterProblem).
    /// </summary>
    /// <param name="destination">Whom to ping.</param>
    /// <param name="timeout">How long to wait for the reply (positive).</param>
    /// <param name="dataSize">Bytes of echo data (0..65500; fragmented as needed).</param>
    /// <param name="cancellationToken">Cancels the wait (the task is then canceled).</param>
    /// <exception cref="ArgumentException">No address of the destination's family, or bad sizes.</exception>
    /// <exception cref="SocketException">NetworkUnreachable for an IPv4 destination while <see cref="NetStackOptions.Dhcp"/> has no lease bound (as ping on a host without an address).</exception>
    /// <exception cref="ObjectDisposedException">The stack is disposed (also for a ping pending at disposal).</exception>
    public Task<PingReply> PingAsync(IPAddress destination, TimeSpan timeout, int dataSize = 56, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(destination);
        if (destination.IsIPv4MappedToIPv6)
            destination = destination.MapToIPv4();
        if (timeout <= TimeSpan.Zero)
            throw new ArgumentOutOfRangeException(nameof(timeout), "The timeout must be positive.");
        ArgumentOutOfRangeException.ThrowIfNegative(dataSize);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(dataSize, 65500);
        var target = IpAddr.OfIPAddress(destination);
        var source = SourceFor(target);
        if (source is null && !target.IsIpv6 && Options.Dhcp)
            throw new SocketException((int)SocketError.NetworkUnreachable);
        if (source is null)
            throw new ArgumentException($"The stack has no {(target.IsIpv6 ? "IPv6" : "IPv4")} address to ping {destination} from.", nameof(destination));
        if (cancellationToken.IsCancellationRequested)
            return Task.FromCanceled<PingReply>(cancellationToken);
        var completion = new TaskCompletionSource<PingReply>(TaskCreationOptions.RunContinuationsAsynchronously);
        long timeoutMicros = (long)Math.Min(timeout.TotalMicroseconds, long.MaxValue / 4);
        Post(() =>
        {
            long now = Now();
            ushort sequence = _nextPingSequence++;
            var ping = new PendingPing
            {
                Completion = completion,
                Destination = destination,
                DestinationAddress = target,
                SentAt = now,
                Deadline = now + timeoutMicros,
            };
            // A sequence number still pending (65536 pings later) gives way to the new one.
            if (_pings.Remove(sequence, out var old))
                old.Completion.TrySetResult(new PingReply(IPStatus.TimedOut, old.Destination, TimeSpan.Zero, 0));
            _pings[sequence] = ping;
            if (cancellationToken.CanBeCanceled)
            {
                ping.Registration = cancellationToken.Register(() =>
                {
                    try
                    {
                        Post(() =>
                        {
                            if (_pings.TryGetValue(sequence, out var p) && ReferenceEquals(p, ping))
                                _pings.Remove(sequence);
                        }, null);
                    }
                    catch (ObjectDisposedException)
                    {
                    }
                    completion.TrySetCanceled(cancellationToken);
                });
            }
            var data = new byte[dataSize];
            for (int i = 0; i < data.Length; i++)
                data[i] = (byte)i;
            int length = IpLayer.writeEchoRequest(source.Value, target, _pingIdentifier, sequence, NextIdentification(), data, _packetBuffer);
            SendPacket(length, target, now);
            _statistics.Increment("ping.sent");
        }, e => completion.TrySetException(e));
        return completion.Task;
    }

}
