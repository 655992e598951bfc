using NetStack.Core.Wire;
using NetStack.Device;
using NetStack.Engine;

namespace NetStack.Diagnostics;

/// <summary>
/// An <see cref="IPacketDevice"/> decorator that records every packet the stack reads from and
/// writes to the device underneath in a <see cref="PcapWriter"/>, both directions in one file, the
/// bytes exactly as they cross the device.
/// </summary>
/// <remarks>
/// <see cref="NetworkStack"/> puts it outermost when <see cref="NetStackOptions.CapturePath"/> is
/// set, so the capture shows what the stack itself sees: a fault-injecting device underneath drops,
/// corrupts or delays packets before they are captured on the way in and after on the way out.
/// A packet is captured after the inner device has read it, and before it is handed to the inner
/// device for writing (so a write that fails is still in the file). An error writing the capture
/// (a full disk) surfaces as an exception from <see cref="TryRead(Span{byte}, int, out int)"/> or <see cref="Write(ReadOnlySpan{byte})"/>, which
/// the stack counts as a device error.
/// <para>
/// Offloads pass through (<see cref="IOffloadPacketDevice"/>, when the inner device has them). A
/// TCP super-segment is recorded as it crosses the device, one packet longer than the MTU (as
/// tcpdump on the TUN interface shows it too). A packet with a partial checksum (NEEDS_CSUM) is
/// recorded with the checksum completed, in a copy, so that the capture shows valid packets; the
/// packet itself crosses the device unchanged.
/// </para>
/// </remarks>
public sealed class CapturingPacketDevice : IOffloadPacketDevice
{
    private readonly IPacketDevice _inner;
    private readonly PcapWriter _capture;
    private readonly bool _ownsCapture;
    private readonly IOffloadPacketDevice? _offload;

    // Scratch copies for completing partial checksums: one for the reading loop, one (locked)
    // for writers. Made on first use: a capture without offloads never needs them.
    private byte[]? _readScratch;
    private byte[]? _writeScratch;
    private readonly object _writeGate = new();

    /// <summary>Wraps <paramref name="inner"/>; the decorator owns it and disposes it.</summary>
    /// <param name="inner">The device that really moves the packets.</param>
    /// <param name="capture">Where the packets are recorded.</param>
    /// <param name="ownsCapture">True to dispose <paramref name="capture"/> (flushing it) after the inner device.</param>
    public CapturingPacketDevice(IPacketDevice inner, PcapWriter capture, bool ownsCapture = true)
    {
        ArgumentNullException.ThrowIfNull(inner);
        ArgumentNullException.ThrowIfNull(capture);
        _inner = inner;
        _capture = capture;
        _ownsCapture = ownsCapture;
        _offload = inner as IOffloadPacketDevice;
    }

    /// <summary>The device underneath.</summary>
    public IPacketDevice Inner => _inner;

    /// <summary>The capture the packets go to.</summary>
    public PcapWriter Capture => _capture;

    /// <inheritdoc/>
    public int Mtu => _inner.Mtu;

    /// <summary>The inner device's offloads (None when it has no <see cref="IOffloadPacketDevice"/>).</summary>
    public TunOffloads Offloads => _offload?.Offloads ?? TunOffloads.None;

    /// <inheritdoc/>
    public bool TryRead(Span<byte> buffer, int millisecondsTimeout, out int length)
    {
        if (!_inner.TryRead(buffer, millisecondsTimeout, out length))
            return false;
        _capture.Write(buffer[..length]);
        return true;
    }

    /// <inheritdoc/>
    public bool TryReadWithHeader(Span<byte> buffer, int millisecondsTimeout, out int length, out VirtioNetHeader header)
    {
        if (_offload is null)
        {
            header = VirtioNetHeader.None;
            return TryRead(buffer, millisecondsTimeout, out length);
        }
        if (!_offload.TryReadWithHeader(buffer, millisecondsTimeout, out length, out header))
            return false;
        Record(buffer[..length], header, ref _readScratch);
        return true;
    }

    /// <inheritdoc/>
    public void Write(ReadOnlySpan<byte> packet)
    {
        _capture.Write(packet);
        _inner.Write(packet);
    }

    /// <inheritdoc/>
    /// <exception cref="InvalidOperationException">The header is not None and the inner device carries no offload metadata.</exception>
    public void Write(ReadOnlySpan<byte> packet, in VirtioNetHeader header)
    {
        if (_offload is null)
        {
            if (header.Flags != VirtioNetFlags.None || header.GsoType != VirtioGsoType.None)
                throw new InvalidOperationException("The device under the capture carries no offload metadata.");
            Write(packet);
            return;
        }
        lock (_writeGate)
            Record(packet, header, ref _writeScratch);
        _offload.Write(packet, header);
    }

    /// <summary>
    /// Captures the packet the pieces make (with its checksum completed, as for
    /// <see cref="Write(ReadOnlySpan{byte})"/>), then passes the pieces on as they are.
    /// </summary>
    /// <param name="head">The packet's first bytes.</param>
    /// <param name="payload">The bytes after them.</param>
    /// <param name="payloadTail">The bytes after those.</param>
    public void WriteGather(ReadOnlySpan<byte> head, ReadOnlySpan<byte> payload, ReadOnlySpan<byte> payloadTail)
    {
        lock (_writeGate)
            Record(Joined(head, payload, payloadTail), VirtioNetHeader.None, ref _writeScratch);
        _inner.WriteGather(head, payload, payloadTail);
    }

    /// <summary>
    /// Captures the packet the pieces make, its partial checksum completed, then passes the
    /// pieces and the header on as they are.
    /// </summary>
    /// <param name="head">The packet's first bytes.</param>
    /// <param name="payload">The bytes after them.</param>
    /// <param name="payloadTail">The bytes after those.</param>
    /// <param name="header">The packet's offload metadata.</param>
    /// <exception cref="InvalidOperationException">The header is not None but the device underneath carries no offload metadata.</exception>
    public void WriteGather(ReadOnlySpan<byte> head, ReadOnlySpan<byte> payload, ReadOnlySpan<byte> payloadTail, in VirtioNetHeader header)
    {
        if (_offload is null)
        {
            if (header.Flags != VirtioNetFlags.None || header.GsoType != VirtioGsoType.None)
                throw new InvalidOperationException("The device under the capture carries no offload metadata.");
            WriteGather(head, payload, payloadTail);
            return;
        }
        lock (_writeGate)
            Record(Joined(head, payload, payloadTail), header, ref _writeScratch);
        _offload.WriteGather(head, payload, payloadTail, header);
    }

    // The gathered packet in one piece, for the capture (under _writeGate); Record copies it once
    // more, into its own scratch, only when a partial checksum must be completed.
    private byte[]? _joinScratch;

    private ReadOnlySpan<byte> Joined(ReadOnlySpan<byte> head, ReadOnlySpan<byte> payload, ReadOnlySpan<byte> payloadTail)
    {
        int length = head.Length + payload.Length + payloadTail.Length;
        if (_joinScratch is null || _joinScratch.Length < length)
            _joinScratch = new byte[Math.Max(length, 65536 + 128)];
        PacketPieces.Join(head, payload, payloadTail, _joinScratch);
        return _joinScratch.AsSpan(0, length);
    }

    private void Record(ReadOnlySpan<byte> packet, in VirtioNetHeader header, ref byte[]? scratch)
    {
        if (!header.NeedsChecksum)
        {
            _capture.Write(packet);
            return;
        }
        scratch ??= new byte[65536 + 128];
        var copy = scratch.AsSpan(0, Math.Min(packet.Length, scratch.Length));
        packet[..copy.Length].CopyTo(copy);
        VirtioNet.completeChecksum(header, copy);
        _capture.Write(copy);
    }

    /// <inheritdoc/>
    public void Wake() => _inner.Wake();

    /// <summary>Disposes the inner device, then the capture when the decorator owns it (flushing the file).</summary>
    public void Dispose()
    {
        try
        {
            _inner.Dispose();
        }
        finally
        {
            if (_ownsCapture)
                _capture.Dispose();
        }
    }
}
