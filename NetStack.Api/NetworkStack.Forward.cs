using System.Buffers;
using System.Net.Sockets;
using NetStack.Core.Stack;
using NetStack.Core.Wire;

namespace NetStack;

// Any-destination mode: the TCP, UDP and echo forwarders. The core decides which packets are
// foreign (IpLayer, AnyDestination), which SYN becomes a request and what becomes of it (the
// TCP table's pending requests), which datagram belongs to which flow and when a flow ends (the
// UDP table); this file hands them to the user's objects and carries out the user's decisions.
public sealed partial class NetworkStack
{
    // Loop-only (set through OnLoop): the forwarders' objects.
    private UdpForwarder? _udpForwarder;
    private EchoForwarder? _echoForwarder;
    private readonly List<UdpFlowEntry> _expiredFlows = [];

    // Enough of a packet to quote in an ICMP error: RFC 1812 §4.3.2.3 keeps the error within 576
    // bytes over IPv4, RFC 4443 §2.4(c) within the minimum MTU over IPv6.
    private const int QuoteBytes = 1232;

    private void RequireAnyDestination()
    {
        if (!Options.AnyDestination)
            throw new InvalidOperationException("Forwarding needs a stack started with NetStackOptions.AnyDestination.");
    }

    /// <summary>
    /// Starts taking the TCP connections no listener takes, to any address and port (and to the
    /// stack's own addresses on ports nobody listens on), as requests that wait for a decision.
    /// </summary>
    /// <returns>The forwarder; dispose it to stop.</returns>
    /// <exception cref="InvalidOperationException">The stack was not started with <see cref="NetStackOptions.AnyDestination"/>, or it has a TCP forwarder already.</exception>
    /// <exception cref="ObjectDisposedException">The stack is disposed.</exception>
    public TcpForwarder ForwardTcp()
    {
        RequireAnyDestination();
        return OnLoop(() =>
        {
            var endpoint = _tcpTable.ListenForward(Options.ForwardMaxPendingTcp, Options.ForwardMaxPendingTcp)
                ?? throw new InvalidOperationException("The stack has a TCP forwarder already.");
            var forwarder = new TcpForwarder(this, endpoint);
            endpoint.Owner = forwarder;
            return forwarder;
        });
    }

    /// <summary>
    /// Starts taking the UDP datagrams no bound socket takes, to any address and port, as flows.
    /// </summary>
    /// <returns>The forwarder; dispose it to stop.</returns>
    /// <exception cref="InvalidOperationException">The stack was not started with <see cref="NetStackOptions.AnyDestination"/>, or it has a UDP forwarder already.</exception>
    /// <exception cref="ObjectDisposedException">The stack is disposed.</exception>
    public UdpForwarder ForwardUdp()
    {
        RequireAnyDestination();
        return OnLoop(() =>
        {
            if (!_udpTable.ForwardFlows(Options.ForwardMaxUdpFlows, (long)Options.ForwardUdpIdleTimeout.TotalMicroseconds))
                throw new InvalidOperationException("The stack has a UDP forwarder already.");
            return _udpForwarder = new UdpForwarder(this);
        });
    }

    /// <summary>Starts taking the echo requests to addresses other than the stack's own.</summary>
    /// <returns>The forwarder; dispose it to stop.</returns>
    /// <exception cref="InvalidOperationException">The stack was not started with <see cref="NetStackOptions.AnyDestination"/>, or it has an echo forwarder already.</exception>
    /// <exception cref="ObjectDisposedException">The stack is disposed.</exception>
    public EchoForwarder ForwardEcho()
    {
        RequireAnyDestination();
        return OnLoop(() =>
        {
            if (_echoForwarder is not null)
                throw new InvalidOperationException("The stack has an echo forwarder already.");
            return _echoForwarder = new EchoForwarder(this, Options.ForwardMaxEchoRequests);
        });
    }

    internal void StopForwardingTcp(TcpForwarder forwarder) => TryOnLoop(() => _tcpTable.Unlisten(forwarder.Endpoint));

    internal void StopForwardingUdp(UdpForwarder forwarder) => TryOnLoop(() =>
    {
        if (!ReferenceEquals(_udpForwarder, forwarder))
            return;
        _udpForwarder = null;
        foreach (var entry in _udpTable.StopForwarding())
            (entry.Owner as UdpFlow)?.End(SocketError.OperationAborted);
    });

    internal void StopForwardingEcho(EchoForwarder forwarder) => TryOnLoop(() =>
    {
        if (ReferenceEquals(_echoForwarder, forwarder))
            _echoForwarder = null;
    });

    // Runs `run` on the loop unless the stack is gone (its tables with it).
    private void TryOnLoop(Action run)
    {
        try
        {
            OnLoop(() =>
            {
                run();
                return true;
            });
        }
        catch (ObjectDisposedException)
        {
        }
    }

    internal void CountForwardDrop(string counter) => _statistics.Increment(counter);

    // ------------------------------------------------------------------------------------------
    // TCP
    // ------------------------------------------------------------------------------------------

    // Loop: the table made a request of a SYN (`packet` is its IP packet).
    private void OfferTcpRequest(TcpPendingConnection pending, ReadOnlySpan<byte> packet)
    {
        if (_tcpTable.Forwarder?.Owner is not TcpForwarder forwarder)
            return;
        var request = new TcpForwardRequest(this, pending, packet[..Math.Min(packet.Length, QuoteBytes)].ToArray());
        pending.Owner = request;
        forwarder.Offer(request);
    }

    // The user accepted: the handshake goes on; completes with the connection the table opened.
    internal Task<TcpConnection> AcceptForwardedAsync(TcpForwardRequest request)
    {
        var opened = new TaskCompletionSource<TcpConnection>(TaskCreationOptions.RunContinuationsAsynchronously);
        Post(() =>
        {
            long now = Now();
            var output = TcpOutput();
            if (!_tcpTable.AcceptPending(output, now, _ip, request.Pending))
            {
                ExecuteOutput(output, default, now);
                opened.TrySetException(new SocketException((int)(request.IsExpired || !request.Pending.IsPending
                    ? SocketError.TimedOut
                    : SocketError.TooManyOpenSockets)));
                return;
            }
            ExecuteOutput(output, default, now);
            if (_tcpTable.Find(request.Pending.Key)?.Owner is TcpConnection connection)
                opened.TrySetResult(connection);
            else
                opened.TrySetException(new SocketException((int)SocketError.ConnectionAborted));
        }, e => opened.TrySetException(e));
        return opened.Task;
    }

    // The user refused.
    internal void RefuseForwarded(TcpForwardRequest request, ForwardRefusal how) => Post(() =>
    {
        var output = TcpOutput();
        if (!_tcpTable.RefusePending(output, request.Pending, how == ForwardRefusal.Reset))
        {
            Count(output);
            return;
        }
        ExecuteOutput(output, default, Now());
        if (ErrorFor(how) is { } error)
            SendError(error, request.Quote, "icmp.error.sent.forward-refused");
    }, null);

    // The ICMP error a refusal sends, or null (a RST, or nothing).
    private static OutgoingError? ErrorFor(ForwardRefusal how) => how switch
    {
        ForwardRefusal.HostUnreachable => OutgoingError.HostUnreachable,
        ForwardRefusal.NetworkUnreachable => OutgoingError.NetworkUnreachable,
        ForwardRefusal.PortUnreachable => OutgoingError.PortUnreachable,
        ForwardRefusal.AdministrativelyProhibited => OutgoingError.AdministrativelyProhibited,
        _ => null,
    };

    // ------------------------------------------------------------------------------------------
    // UDP
    // ------------------------------------------------------------------------------------------

    // Loop: a datagram for a flow; `isNew` when the table just made the flow.
    private void OnFlowDatagram(UdpFlowEntry entry, bool isNew, ReadOnlySpan<byte> packet, ReadOnlySpan<byte> payload)
    {
        UdpForwarder? offerTo = null;
        UdpFlow? created = null;
        if (isNew)
        {
            if (_udpForwarder is not { } forwarder)
            {
                _udpTable.Close(entry);
                return;
            }
            created = new UdpFlow(this, entry, packet[..Math.Min(packet.Length, QuoteBytes)].ToArray(), Options.UdpReceiveQueueBytes);
            entry.Owner = created;
            _statistics.Increment("udp.forward.flow-opened");
            offerTo = forwarder;
        }
        if (entry.Owner is UdpFlow f && f.Deliver(payload))
            _statistics.Increment("udp.forward.delivered");
        else
            _statistics.Increment("udp.forward.drop.queue-full");
        // Offered only once its first datagram is in it: the user may take the flow on another
        // thread at once and end it (refuse it) before this thread would have delivered.
        if (offerTo is not null && created is not null)
            offerTo.Offer(created);
    }

    internal void ScheduleFlowSend(UdpFlow flow)
    {
        try
        {
            Post(flow.SendCommand ??= () => LoopFlowSend(flow), null);
        }
        catch (ObjectDisposedException)
        {
            flow.End(SocketError.OperationAborted);
        }
    }

    private void LoopFlowSend(UdpFlow flow)
    {
        long now = Now();
        var key = flow.Entry.Key;
        while (flow.TryTakeSend(out var buffer, out int length))
        {
            try
            {
                if (flow.Entry.IsOpen)
                {
                    int n = IpLayer.writeUdp(key.Local, key.Remote, key.LocalPort, key.RemotePort, NextIdentification(), buffer.AsSpan(0, length), _packetBuffer);
                    SendPacket(n, key.Remote, now);
                    _udpTable.Touch(flow.Entry, now);
                    _statistics.Increment("udp.sent");
                    _statistics.Increment("udp.forward.sent");
                }
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }
    }

    internal void CloseFlow(UdpFlow flow) => TryPost(() =>
    {
        if (flow.Entry.IsOpen)
            _statistics.Increment("udp.forward.flow-closed");
        _udpTable.Close(flow.Entry);
    });

    internal void RefuseFlow(UdpFlow flow, ForwardRefusal how) => TryPost(() =>
    {
        if ((how == ForwardRefusal.Reset ? OutgoingError.PortUnreachable : ErrorFor(how)) is { } error)
            SendError(error, flow.Quote, "icmp.error.sent.forward-refused");
    });

    private void TryPost(Action run)
    {
        try
        {
            Post(run, null);
        }
        catch (ObjectDisposedException)
        {
        }
    }

    // Loop: an ICMP error quoting one of a flow's replies.
    private bool ReportToFlow(IcmpErrorView error)
    {
        var q = error.Quoted;
        if (_udpTable.FlowForError(q.Source, q.Ports.Source, q.Destination, q.Ports.Destination)?.Owner is not UdpFlow flow)
            return false;
        if (error.Kind == IcmpErrorKind.PortUnreachable)
            flow.ReportRefused();
        return true;
    }

    private long NextForwardDeadline() => _udpTable.NextDeadline;

    private void RunForwardTimers(long now)
    {
        if (_udpTable.NextDeadline > now)
            return;
        _expiredFlows.Clear();
        _udpTable.ExpireFlows(now, _expiredFlows);
        foreach (var entry in _expiredFlows)
        {
            _statistics.Increment("udp.forward.flow-expired");
            (entry.Owner as UdpFlow)?.End(SocketError.TimedOut);
        }
        _expiredFlows.Clear();
    }

    // ------------------------------------------------------------------------------------------
    // Echo
    // ------------------------------------------------------------------------------------------

    // Loop: an echo request to another address, for the echo forwarder; false when there is none.
    private bool OfferEcho(ReadOnlySpan<byte> packet, in Received r)
    {
        if (_echoForwarder is not { } forwarder)
            return false;
        var whole = IpLayer.slice(packet, r.Packet);
        var copy = whole.ToArray();
        // Payload and Packet point into the same bytes (the packet read, or the reassembled one).
        int dataOffset = r.Payload.Offset - r.Packet.Offset;
        var request = new EchoRequest(this, r.Source, r.Destination, r.Echo.Identifier, r.Echo.Sequence, copy, dataOffset, r.Payload.Length);
        _statistics.Increment(forwarder.Offer(request) ? "icmp.echo.forwarded" : "icmp.forward.drop.queue-full");
        return true;
    }

    internal void ReplyEcho(EchoRequest request) => Post(() =>
    {
        int length = IpLayer.writeEchoReply(request.DestinationAddress, request.SourceAddress, request.Identifier, request.Sequence,
            NextIdentification(), request.Data.Span, _packetBuffer);
        SendPacket(length, request.SourceAddress, Now());
        _statistics.Increment("icmp.echo.replied");
    }, null);

    internal void RefuseEcho(EchoRequest request, ForwardRefusal how) => Post(() =>
    {
        var error = how == ForwardRefusal.Reset ? OutgoingError.HostUnreachable : ErrorFor(how);
        if (error is { } e)
            SendError(e, request.Packet, "icmp.error.sent.forward-refused");
    }, null);

    // Dispose, once the loop has stopped: the forwarders' users learn the stack is gone.
    private void DisposeForwarders()
    {
        _echoForwarder?.StackDisposed();
        if (_udpForwarder is { } udp)
        {
            udp.StackDisposed();
            foreach (var entry in _udpTable.StopForwarding())
                (entry.Owner as UdpFlow)?.End(SocketError.OperationAborted);
        }
    }
}
