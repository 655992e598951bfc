using System.Buffers.Binary;

namespace NetStack.Diagnostics;

/// <summary>
/// Writes packets to a stream as a classic pcap file (the libpcap format, draft-ietf-opsawg-pcap)
/// that Wireshark, tshark and tcpdump read: link type <see cref="LinkTypeRaw"/> (each record is an
/// IPv4 or IPv6 packet, exactly as on a TUN descriptor) and microsecond timestamps.
/// </summary>
/// <remarks>
/// <see cref="Write(DateTimeOffset, ReadOnlySpan{byte})"/> is safe from any thread: a record is
/// written whole under a lock, so records from different threads never interleave. The file header
/// is written by the constructor, so even a capture with no packets is a valid file. Disposing
/// flushes the stream (and closes it unless <c>leaveOpen</c>).
/// </remarks>
public sealed class PcapWriter : IDisposable
{
    /// <summary>LINKTYPE_RAW (tcpdump.org link-layer header types): the record starts with the IP header, version 4 or 6.</summary>
    public const uint LinkTypeRaw = 101;

    /// <summary>The default snapshot length: the largest IP packet (the 16-bit total/payload length) fits whole.</summary>
    public const int DefaultSnapLength = 65535;

    // §4 file header: magic, version 2.4, two reserved 32-bit fields (once thiszone and sigfigs,
    // always 0 today), snaplen, link type. Written little-endian, as every x86 and ARM capture is;
    // readers tell the byte order from the magic.
    private const uint MicrosecondMagic = 0xA1B2C3D4;
    private const ushort VersionMajor = 2;
    private const ushort VersionMinor = 4;
    private const int FileHeaderLength = 24;

    // §5 record header: seconds, microseconds, captured length, original length.
    private const int RecordHeaderLength = 16;

    private readonly Stream _stream;
    private readonly bool _leaveOpen;
    private readonly object _gate = new();
    private bool _disposed;

    /// <summary>Starts a capture on <paramref name="stream"/>, writing the 24-byte file header at once.</summary>
    /// <param name="stream">A writable stream, positioned where the file starts.</param>
    /// <param name="snapLength">The most bytes of a packet to keep (1..262144, libpcap's limit); longer packets are cut, their original length kept.</param>
    /// <param name="leaveOpen">True to leave <paramref name="stream"/> open when the writer is disposed.</param>
    /// <exception cref="ArgumentException">The stream is not writable, or the snap length is out of range.</exception>
    public PcapWriter(Stream stream, int snapLength = DefaultSnapLength, bool leaveOpen = false)
    {
        ArgumentNullException.ThrowIfNull(stream);
        if (!stream.CanWrite)
            throw new ArgumentException("The capture stream is not writable.", nameof(stream));
        ArgumentOutOfRangeException.ThrowIfLessThan(snapLength, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(snapLength, 262144);
        _stream = stream;
        _leaveOpen = leaveOpen;
        SnapLength = snapLength;

        Span<byte> header = stackalloc byte[FileHeaderLength];
        BinaryPrimitives.WriteUInt32LittleEndian(header, MicrosecondMagic);
        BinaryPrimitives.WriteUInt16LittleEndian(header[4..], VersionMajor);
        BinaryPrimitives.WriteUInt16LittleEndian(header[6..], VersionMinor);
        BinaryPrimitives.WriteUInt32LittleEndian(header[8..], 0);
        BinaryPrimitives.WriteUInt32LittleEndian(header[12..], 0);
        BinaryPrimitives.WriteUInt32LittleEndian(header[16..], (uint)snapLength);
        BinaryPrimitives.WriteUInt32LittleEndian(header[20..], LinkTypeRaw);
        _stream.Write(header);
    }

    /// <summary>The most bytes of one packet the file keeps.</summary>
    public int SnapLength { get; }

    /// <summary>Records written so far.</summary>
    public long PacketCount { get; private set; }

    /// <summary>Appends one packet stamped with the current UTC time.</summary>
    /// <param name="packet">The IP packet's bytes.</param>
    /// <exception cref="ObjectDisposedException">The writer is disposed.</exception>
    public void Write(ReadOnlySpan<byte> packet) => Write(DateTimeOffset.UtcNow, packet);

    /// <summary>Appends one packet with the given timestamp. Safe from any thread.</summary>
    /// <param name="timestamp">When the packet was seen; 1970-01-01 to 2106-02-07 (the 32-bit seconds field).</param>
    /// <param name="packet">The IP packet's bytes; at most <see cref="SnapLength"/> of them are kept.</param>
    /// <exception cref="ArgumentOutOfRangeException">The timestamp does not fit the format.</exception>
    /// <exception cref="ObjectDisposedException">The writer is disposed.</exception>
    public void Write(DateTimeOffset timestamp, ReadOnlySpan<byte> packet)
    {
        long micros = (timestamp.UtcTicks - DateTime.UnixEpoch.Ticks) / (TimeSpan.TicksPerMillisecond / 1000);
        long seconds = micros / 1_000_000;
        if (micros < 0 || seconds > uint.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(timestamp), timestamp, "A pcap timestamp lies between 1970 and 2106.");
        int captured = Math.Min(packet.Length, SnapLength);

        Span<byte> header = stackalloc byte[RecordHeaderLength];
        BinaryPrimitives.WriteUInt32LittleEndian(header, (uint)seconds);
        BinaryPrimitives.WriteUInt32LittleEndian(header[4..], (uint)(micros % 1_000_000));
        BinaryPrimitives.WriteUInt32LittleEndian(header[8..], (uint)captured);
        BinaryPrimitives.WriteUInt32LittleEndian(header[12..], (uint)packet.Length);

        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _stream.Write(header);
            _stream.Write(packet[..captured]);
            PacketCount++;
        }
    }

    /// <summary>Flushes what was written to the stream's destination.</summary>
    /// <exception cref="ObjectDisposedException">The writer is disposed.</exception>
    public void Flush()
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _stream.Flush();
        }
    }

    /// <summary>Flushes the stream and closes it unless the writer was made with <c>leaveOpen</c>. Later writes throw.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed)
                return;
            _disposed = true;
            try
            {
                _stream.Flush();
            }
            finally
            {
                if (!_leaveOpen)
                    _stream.Dispose();
            }
        }
    }
}
