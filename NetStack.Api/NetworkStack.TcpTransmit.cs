using NetStack.Core.Stack;
using NetStack.Core.Tcp;
using NetStack.Core.Wire;
using NetStack.Device;

namespace NetStack;

// TCP out: each segment the core names is built (headers by the core's IpLayer writers, the
// IPv4 Identification from its counter) and written with its payload straight from the send
// ring; with TSO, the runs the core's SegmentBatch forms go as one super-segment.
public sealed partial class NetworkStack
{
    // Builds one segment and sends it: with data as a gather write (TransmitGathered), else
    // whole in the packet buffer. Never fragmented: the core sizes segments for the path MTU
    // (IPv4 TCP carries DF; a router on a narrower path answers with "fragmentation needed" /
    // "packet too big" and the connection's MSS follows, Connection.handleIcmpInto).
    // `header`: the IP header settings the core gave the segment's group (its connection's
    // socket options, or TCP's defaults for a RST for no connection).
    private void Transmit(IpAddr local, ushort localPort, IpAddr remote, ushort remotePort, OutgoingSegment segment, TcpConnection? c, in IpHeaderSettings header, long now)
    {
        if (_silentTcp)
        {
            _statistics.Increment("tcp.drop.address-gone");
            return;
        }
        if (segment.DataLength > 0)
        {
            if (TransmitGathered(c!, segment, segment.Flags, segment.DataLength, 0, _ipIds.Next()))
                _deviceWritten.Increment();
            _tcpSent.Increment();
            return;
        }
        int length = IpLayer.writeTcpWith(header, local, remote, localPort, remotePort, _ipIds.Next(), segment, ReadOnlySpan<byte>.Empty, _packetBuffer);
        if (Output(_packetBuffer.AsSpan(0, length)))
        {
            _deviceWritten.Increment();
            Interlocked.Add(ref _bytesWritten, length);
        }
        _tcpSent.Increment();
    }

    // ------------------------------------------------------------------------------------------
    // TCP segmentation offload
    // ------------------------------------------------------------------------------------------

    private bool TsoFor(IpAddr local) =>
        _offload is not null
        && (_offload.Offloads & (local.IsIpv6 ? TunOffloads.Tso6 : TunOffloads.Tso4)) != 0;

    private void TransmitData(TcpConnection c, in OutgoingSegment segment, long now)
    {
        if (_batch.Count > 0)
        {
            if (_batch.TryJoin(c, in segment))
                return;
            FlushRun(now);
        }
        if (!_batch.TryStart(c, in segment, c.LocalAddress, TsoFor(c.LocalAddress)))
            Transmit(c.LocalAddress, c.LocalPort, c.RemoteAddress, c.RemotePort, segment, c, c.Core.Config.IpHeader, now);
    }

    // Sends the gathered run: one segment as an ordinary packet, several as one super-segment
    // (gso TCPV4/TCPV6, gso_size the first segment's length, NEEDS_CSUM with the pseudo-header
    // sum in the checksum field) that the kernel takes whole or cuts into exactly those segments,
    // numbering their IPv4 identification on from ours.
    private void FlushRun(long now)
    {
        int count = _batch.Count;
        var c = (TcpConnection)_batch.Owner;
        var first = _batch.First;
        var lastFlags = _batch.LastFlags;
        int bytes = _batch.Bytes;
        int segmentSize = _batch.SegmentSize;
        _batch.Clear();
        if (count == 1)
        {
            Transmit(c.LocalAddress, c.LocalPort, c.RemoteAddress, c.RemotePort, first, c, c.Core.Config.IpHeader, now);
            return;
        }
        if (TransmitGathered(c, first, lastFlags, bytes, segmentSize, _ipIds.Take(count)))
            _deviceWritten.Increment();
        _tcpSent.Add(count);
        _statistics.Increment("offload.tso.sent");
        _statistics.Increment("offload.tso.segments", count);
    }

    // Sends `bytes` of c's send stream from segment's position, headed by segment's header with
    // `flags`, as one gather write: the IP and TCP headers from the packet buffer, the payload
    // straight from the send ring (one or two pieces), so the payload is copied once, by the
    // kernel, instead of into our packet first. With offloads in force the TCP checksum is left
    // partial (NEEDS_CSUM) for the kernel, which verifies nothing for local delivery and sums
    // what it sends on; `segmentSize` > 0 makes it a super-segment to cut (TSO). Without, the
    // checksum is completed over the headers and the ring pieces, a read of the payload instead
    // of a copy and a read.
    // Returns whether it went to the device (false: it looped back to the stack itself).
    private bool TransmitGathered(TcpConnection c, OutgoingSegment segment, TcpFlags flags, int bytes, int segmentSize, ushort identification)
    {
        var local = c.LocalAddress;
        int length = IpLayer.writeTcpSegmentsWith(c.Core.Config.IpHeader, local, c.RemoteAddress, c.LocalPort, c.RemotePort,
            identification, segment, flags, bytes, _packetBuffer);
        int headerBytes = length - bytes;
        c.SendSlices(segment.DataPosition, bytes, out var payload, out var tail);
        var head = _packetBuffer.AsSpan(0, headerBytes);
        if (_offload is not null)
        {
            int ipHeader = local.IsIpv6 ? 40 : 20;
            var header = VirtioNet.tcpSegments(local.IsIpv6, ipHeader, headerBytes - ipHeader, segmentSize);
            if (!OutputGather(head, payload, tail, _offload, header))
                return false;
        }
        else
        {
            ulong sum = Checksum.sumAfter(Checksum.sum(0UL, payload), payload.Length, tail);
            IpLayer.completeTcpChecksum(local, headerBytes, sum, _packetBuffer);
            if (!OutputGather(head, payload, tail, null, VirtioNetHeader.None))
                return false;
        }
        Interlocked.Add(ref _bytesWritten, length);
        return true;
    }
}
