using System.Buffers;
using System.Net;
using System.Net.Sockets;
using NetStack.Core.Ip;
using NetStack.Core.Stack;
using NetStack.Core.Wire;
using NetStack.Device;
using NetStack.Diagnostics;
using NetStack.Engine;

namespace NetStack;

// UDP: datagrams received for the sockets, binding, and sending (USO super-datagrams included).
public sealed partial class NetworkStack
{
    // segmentSize > 0: a USO super-datagram (gso UDP_L4) from a kernel socket using UDP_SEGMENT;
    // every segmentSize payload bytes are one datagram (the last may be shorter).
    private void OnUdp(ReadOnlySpan<byte> packet, Received r, int segmentSize = 0)
    {
        var payload = IpLayer.slice(packet, r.Payload);
        if (segmentSize > 0 && payload.Length > segmentSize)
        {
            _statistics.Increment("offload.uso.received");
            for (int at = 0; at < payload.Length; at += segmentSize)
                OnUdpDatagram(packet, r, payload.Slice(at, Math.Min(segmentSize, payload.Length - at)));
            return;
        }
        OnUdpDatagram(packet, r, payload);
    }

    private void OnUdpDatagram(ReadOnlySpan<byte> packet, Received r, ReadOnlySpan<byte> payload)
    {
        _statistics.Increment("udp.received");
        // The core says where it goes: a bound socket, a forwarder's flow, or nobody (then with
        // a port unreachable when RFC 1122 §4.1.3.1 wants one, within the ICMP error rate).
        var verdict = _udpTable.Classify(Now(), r.Source, r.Ports.Source, r.Destination, r.Ports.Destination, r.Foreign, r.ToBroadcast || r.ToMulticast,
            out var endpoint, out var flow, out var note);
        switch (verdict)
        {
            case UdpVerdict.Flow:
            case UdpVerdict.NewFlow:
                OnFlowDatagram(flow, verdict == UdpVerdict.NewFlow, IpLayer.slice(packet, r.Packet), payload);
                return;
            case UdpVerdict.PortUnreachable:
                _statistics.Increment(note);
                SendError(OutgoingError.PortUnreachable, IpLayer.slice(packet, r.Packet), "icmp.error.sent.port-unreachable");
                return;
            case UdpVerdict.Drop:
                _statistics.Increment(note);
                return;
        }
        if (endpoint.Owner is not UdpSocket socket)
        {
            _statistics.Increment("udp.drop.no-socket");
            return;
        }
        switch (socket.Deliver(payload, r.Source, r.Ports.Source, r.Destination))
        {
            case DeliveryResult.Delivered:
            case DeliveryResult.Queued:
                _statistics.Increment("udp.delivered");
                break;
            case DeliveryResult.QueueFull:
                _statistics.Increment("udp.drop.queue-full");
                break;
            case DeliveryResult.NotFromConnectedPeer:
                _statistics.Increment("udp.drop.not-connected-peer");
                break;
            default:
                _statistics.Increment("udp.drop.closed");
                break;
        }
    }

    // ------------------------------------------------------------------------------------------
    // UDP
    // ------------------------------------------------------------------------------------------

    /// <summary>
    /// Binds a UDP socket. Port 0 picks a free port in 49152–65535 at random. The address is
    /// <see cref="IPAddress.Any"/> or the stack's IPv4 address (IPv4 only), the stack's IPv6 address
    /// (IPv6 only), or <see cref="IPAddress.IPv6Any"/> (both families, dual mode).
    /// </summary>
    /// <param name="localEndPoint">Address and port.</param>
    /// <exception cref="SocketException">AddressAlreadyInUse when the port is taken (or no ephemeral port is free); AddressNotAvailable for an address that is not the stack's.</exception>
    /// <exception cref="ArgumentException">The address family has no address on this stack.</exception>
    /// <exception cref="ObjectDisposedException">The stack is disposed.</exception>
    public UdpSocket BindUdp(IPEndPoint localEndPoint)
    {
        ArgumentNullException.ThrowIfNull(localEndPoint);
        var (v4, v6) = Families(localEndPoint);
        bool any = localEndPoint.Address.Equals(IPAddress.Any) || localEndPoint.Address.Equals(IPAddress.IPv6Any);
        var address = IpAddr.OfIPAddress(localEndPoint.Address);
        var socket = OnLoop(() =>
        {
            var endpoint = any
                ? _udpTable.BindAll(v4, v6, localEndPoint.Port, Random.Shared.Next())
                : _udpTable.BindOn(address, localEndPoint.Port, Random.Shared.Next());
            if (endpoint is null)
                throw new SocketException((int)SocketError.AddressAlreadyInUse);
            var s = new UdpSocket(this, new IPEndPoint(localEndPoint.Address, endpoint.Port), v4, v6, Options.UdpReceiveQueueBytes) { Endpoint = endpoint };
            endpoint.Owner = s;
            return s;
        });
        _log.UdpBound(socket.LocalEndPoint);
        return socket;
    }

    internal void Unbind(UdpSocket socket)
    {
        try
        {
            OnLoop(() =>
            {
                _udpTable.Unbind(socket.Endpoint);
                return true;
            });
        }
        catch (ObjectDisposedException)
        {
            // The stack is gone, and its table with it.
        }
    }

    /// <summary>The link's MTU (the smaller of the options' and the device's).</summary>
    internal int LinkMtu { get; }

    // Sends `datagram` as one datagram, or with segmentSize > 0 as consecutive datagrams of
    // segmentSize bytes (the caller has checked the count and that each fits the link MTU).
    // The source is the socket's own address when it is bound to one of the destination's
    // family (as a kernel socket's), else the stack's choice for the destination.
    internal ValueTask<int> SendUdpAsync(UdpSocket socket, ReadOnlyMemory<byte> datagram, IpAddr destination, ushort port, int segmentSize, CancellationToken cancellationToken)
    {
        var bound = socket.LocalEndPoint.Address;
        var source = !bound.Equals(IPAddress.Any) && !bound.Equals(IPAddress.IPv6Any)
            && (bound.AddressFamily == AddressFamily.InterNetworkV6) == destination.IsIpv6
                ? IpAddr.OfIPAddress(bound)
                : SourceFor(destination);
        if (source is null)
            return ValueTask.FromException<int>(new SocketException((int)SocketError.NetworkUnreachable));
        // Linux: EACCES for a broadcast destination without SO_BROADCAST.
        if (!socket.EnableBroadcast && IsBroadcast(destination))
            return ValueTask.FromException<int>(new SocketException((int)SocketError.AccessDenied));
        // A multicast datagram leaves with the socket's multicast TTL / hop limit (-1: the default TTL).
        int hopLimit = Multicast.isMulticast(destination)
            ? (destination.IsIpv6 ? socket.MulticastHopLimit : socket.MulticastTimeToLive)
            : -1;
        // The socket's TTL, type of service and Don't Fragment (a multicast datagram: its multicast TTL).
        var header = socket.Header;
        if (hopLimit >= 0)
            header = new IpHeaderSettings((byte)hopLimit, header.TypeOfService, header.DontFragment);
        // The common case, a unicast or broadcast datagram that may be fragmented: copied into a
        // queue that the loop sends from, and done, as sendto on a kernel socket returns once the
        // datagram is queued. Nothing the loop could find changes the outcome (without Don't
        // Fragment no path MTU refuses it), and the order among this socket's sends is kept (one
        // command queue). No task or delegate per datagram: the loop wakes only when idle. Beyond
        // UdpSocket.SendQueueBytes in the queue, a send waits for the loop as below, which is
        // the back-pressure a kernel socket's full send buffer gives.
        if (hopLimit < 0 && segmentSize == 0 && _inlineUdpSends && Volatile.Read(ref _loopIdle) && socket.NothingQueued
            && TrySendUdpInline(header, source.Value, destination, socket.Port, port, datagram.Span))
            return new ValueTask<int>(datagram.Length);
        if (hopLimit < 0 && !header.DontFragment && segmentSize == 0 && socket.TryChargeSend(datagram.Length))
        {
            var copy = ArrayPool<byte>.Shared.Rent(Math.Max(1, datagram.Length));
            datagram.Span.CopyTo(copy);
            if (!TryPostDatagram(new OutgoingDatagram(copy, datagram.Length, source.Value, destination, socket.Port, port, header, socket)))
            {
                socket.ReleaseSend(datagram.Length);
                ArrayPool<byte>.Shared.Return(copy);
                return ValueTask.FromException<int>(new ObjectDisposedException(nameof(NetworkStack)));
            }
            return new ValueTask<int>(datagram.Length);
        }
        return SendUdpOnLoopAsync(socket, datagram, source.Value, destination, port, segmentSize, header, cancellationToken);
    }

    // Whether UDP sends may write their datagram on the sender's thread: the device is the TUN
    // itself (whose writes are safe from any thread; no capture, fault or link layer between).
    private readonly bool _inlineUdpSends;

    // While the loop sleeps, a datagram whose socket has nothing waiting in the loop's queue is
    // written here, on the sender's thread, as sendto on a kernel socket does: no wake of the
    // loop and no thread hop (the loop would only wake to write it). The core still decides
    // everything: the same pure writer and an immutable snapshot of the IP layer's state (the
    // path MTU, which addresses are ours). False, and nothing sent, for what needs the loop: a
    // datagram for ourselves, or one the path MTU would fragment.
    private bool TrySendUdpInline(IpHeaderSettings header, IpAddr source, IpAddr destination, ushort sourcePort, ushort port, ReadOnlySpan<byte> payload)
    {
        var ip = Volatile.Read(ref _ip);
        int length = (destination.IsIpv6 ? 48 : 28) + payload.Length;
        if (length > IpLayer.pathMtu(Now(), destination, ip) || IpLayer.isLoopedDestination(destination, ip))
            return false;
        var buffer = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            int written = IpLayer.writeUdpWith(header, source, destination, sourcePort, port, NextIdentification(), payload, buffer);
            _device.Write(buffer.AsSpan(0, written));
            _deviceWritten.Increment();
            Interlocked.Add(ref _bytesWritten, written);
            _statistics.Increment("udp.sent");
            _statistics.Increment("udp.sent.inline");
        }
        catch (TunDeviceException)
        {
            // As a kernel socket's datagram dropped at a full device queue: gone, and counted.
            _statistics.Increment("udp.drop.device-write");
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
        return true;
    }

    // A send that completes when the loop has written it (or found it too big for Don't
    // Fragment): in a method of its own, since the captures of its lambda would otherwise cost
    // every send an allocation at SendUdpAsync's entry, the fast path's included.
    private ValueTask<int> SendUdpOnLoopAsync(UdpSocket socket, ReadOnlyMemory<byte> datagram, IpAddr source, IpAddr destination, ushort port, int segmentSize,
        IpHeaderSettings header, CancellationToken cancellationToken)
    {
        var completion = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        // Counted as queued until the loop has run it, so that no later send of this socket
        // overtakes it on the sender's thread (TrySendUdpInline).
        socket.ChargeSend(datagram.Length);
        try
        {
            Post(() =>
            {
                socket.ReleaseSend(datagram.Length);
                if (cancellationToken.IsCancellationRequested)
                {
                    completion.TrySetCanceled(cancellationToken);
                    return;
                }
                long now = Now();
                int largest = segmentSize > 0 ? Math.Min(segmentSize, datagram.Length) : datagram.Length;
                if (!IpLayer.udpFits(now, header, destination, largest, _ip))
                {
                    // Don't Fragment and larger than the path MTU: EMSGSIZE on Linux.
                    _statistics.Increment("udp.send.too-big-for-df");
                    completion.TrySetException(new SocketException((int)SocketError.MessageSize));
                    return;
                }
                if (segmentSize > 0 && datagram.Length > segmentSize)
                    SendUdpSegments(source, destination, socket.Port, port, datagram.Span, segmentSize, now, header);
                else
                {
                    int length = IpLayer.writeUdpWith(header, source, destination, socket.Port, port, NextIdentification(), datagram.Span, _packetBuffer);
                    SendPacket(length, destination, now);
                    // IP_MULTICAST_LOOP: the stack's own members of the group get a copy too.
                    if (socket.MulticastLoopback && IpLayer.loopsBackMulticast(destination, _ip))
                        LoopBack(_packetBuffer.AsSpan(0, length), default, default, VirtioNetHeader.None);
                    _statistics.Increment("udp.sent");
                }
                completion.TrySetResult(datagram.Length);
            }, e => completion.TrySetException(e));
        }
        catch (ObjectDisposedException e)
        {
            return ValueTask.FromException<int>(e);
        }
        return new ValueTask<int>(completion.Task);
    }

    // A datagram SendUdpAsync queued: written now, its copy returned to the pool.
    private void SendQueuedDatagram(in OutgoingDatagram d)
    {
        try
        {
            int length = IpLayer.writeUdpWith(d.Header, d.Source, d.Destination, d.SourcePort, d.Port, NextIdentification(), d.Buffer.AsSpan(0, d.Length), _packetBuffer);
            SendPacket(length, d.Destination, Now());
            _statistics.Increment("udp.sent");
        }
        finally
        {
            d.Socket.ReleaseSend(d.Length);
            ArrayPool<byte>.Shared.Return(d.Buffer);
        }
    }

    // Several datagrams from one buffer. With USO in force (a TUN or TAP device whose kernel
    // took TUN_F_USO4/6, Linux 6.2+, which also reads gso UDP_L4 from us) and each datagram
    // within the path MTU: one super-datagram, the headers from the packet buffer and the payload
    // straight from the caller's memory (a gather write, no copy and no checksum pass here),
    // which the kernel cuts into the datagrams. Otherwise one datagram after another through
    // the ordinary path (fragmented if the path MTU has shrunk below a datagram).
    private void SendUdpSegments(IpAddr source, IpAddr destination, ushort sourcePort, ushort port, ReadOnlySpan<byte> data, int segmentSize, long now, IpHeaderSettings header)
    {
        int count = (data.Length + segmentSize - 1) / segmentSize;
        int ipHeader = destination.IsIpv6 ? 40 : 20;
        if (_offload is not null
            && (_offload.Offloads & TunOffloads.Uso4) != 0
            && ipHeader + 8 + segmentSize <= IpLayer.pathMtu(now, destination, _ip)
            && !IpLayer.isLoopedDestination(destination, _ip))
        {
            // The kernel numbers the IPv4 identification of the datagrams it cuts on from ours.
            int length = IpLayer.writeUdpSegmentsWith(header, source, destination, sourcePort, port, _ipIds.Take(count), data.Length, _packetBuffer);
            var virtio = VirtioNet.udpSegments(ipHeader, segmentSize);
            _offload.WriteGather(_packetBuffer.AsSpan(0, length - data.Length), data, default, virtio);
            _deviceWritten.Increment();
            Interlocked.Add(ref _bytesWritten, length);
            _statistics.Increment("udp.sent", count);
            _statistics.Increment("offload.uso.sent");
            _statistics.Increment("offload.uso.segments", count);
            return;
        }
        for (int at = 0; at < data.Length; at += segmentSize)
        {
            var piece = data.Slice(at, Math.Min(segmentSize, data.Length - at));
            int length = IpLayer.writeUdpWith(header, source, destination, sourcePort, port, NextIdentification(), piece, _packetBuffer);
            SendPacket(length, destination, now);
        }
        _statistics.Increment("udp.sent", count);
    }
}

/// <summary>A datagram a <see cref="UdpSocket"/> queued for the loop to send (its payload copied into a pooled buffer).</summary>
internal readonly record struct OutgoingDatagram(
    byte[] Buffer, int Length, IpAddr Source, IpAddr Destination, ushort SourcePort, ushort Port, IpHeaderSettings Header, UdpSocket Socket);
