using System.Buffers;
using NetStack.Core.Stack;
using NetStack.Core.Wire;
using NetStack.Engine;

namespace NetStack;

/// <summary>
/// Loopback inside the stack: a packet for one of the stack's own addresses or for the
/// loopback network (127.0.0.0/8, ::1), as the core's <c>IpLayer.loopsBack</c> decides, never
/// reaches the device. The loop keeps a copy and reads it back as if the device had delivered
/// it, through <c>IpLayer.receiveLooped</c>, after the packet that caused it: a connection, a
/// datagram or a ping to ourselves works on a TUN (whose kernel side would drop it) and on a
/// TAP alike, and 127.0.0.1 never leaves the host (RFC 1122 §3.2.1.3 (g)).
/// </summary>
/// <remarks>
/// A TCP super-segment built for the device's segmentation offload loops back whole with its
/// virtio-net header, as the kernel's own super-segments arrive; UDP sends to ourselves go one
/// datagram at a time. Looped packets are bounded in bytes (<see cref="MaxLoopedBytes"/>); past
/// that they are dropped and counted (<c>loopback.drop.full</c>), and TCP recovers them as any
/// loss. They are counted as <c>loopback.packets</c>, not as device reads or writes, and a
/// capture (<see cref="NetStackOptions.CapturePath"/>) does not see them.
/// </remarks>
public sealed partial class NetworkStack
{
    // What looped packets may hold at once: a few TCP windows' worth.
    private const int MaxLoopedBytes = 16 * 1024 * 1024;

    private readonly record struct LoopedPacket(byte[] Buffer, int Length, VirtioNetHeader Header);

    // Loop-only: packets sent to ourselves, waiting to be read back, and their bytes.
    private readonly Queue<LoopedPacket> _looped = new();
    private long _loopedBytes;

    // Sends a whole packet: back into the stack when it is for us, else to the device (true).
    private bool Output(ReadOnlySpan<byte> packet)
    {
        if (IpLayer.loopsBack(packet, _ip))
        {
            LoopBack(packet, default, default, VirtioNetHeader.None);
            return false;
        }

        _device.Write(packet);
        return true;
    }

    // Sends a packet in three pieces (headers, payload, payload's wrapped tail), with the
    // offload header when `offload` is given; back into the stack when it is for us (false).
    private bool OutputGather(ReadOnlySpan<byte> head, ReadOnlySpan<byte> payload, ReadOnlySpan<byte> tail, IOffloadPacketDevice? offload, in VirtioNetHeader header)
    {
        if (IpLayer.loopsBack(head, _ip))
        {
            LoopBack(head, payload, tail, header);
            return false;
        }

        if (offload is not null)
            offload.WriteGather(head, payload, tail, header);
        else
            _device.WriteGather(head, payload, tail);
        return true;
    }

    private void LoopBack(ReadOnlySpan<byte> head, ReadOnlySpan<byte> payload, ReadOnlySpan<byte> tail, in VirtioNetHeader header)
    {
        int length = head.Length + payload.Length + tail.Length;
        if (_loopedBytes + length > MaxLoopedBytes)
        {
            _statistics.Increment("loopback.drop.full");
            return;
        }

        var buffer = ArrayPool<byte>.Shared.Rent(length);
        head.CopyTo(buffer);
        payload.CopyTo(buffer.AsSpan(head.Length));
        tail.CopyTo(buffer.AsSpan(head.Length + payload.Length));
        _looped.Enqueue(new LoopedPacket(buffer, length, header));
        _loopedBytes += length;
        _statistics.Increment("loopback.packets");
    }

    // Reads back the packets looped so far (those their processing loops go round once more).
    private void DrainLooped()
    {
        for (int n = _looped.Count; n > 0; n--)
        {
            var p = _looped.Dequeue();
            _loopedBytes -= p.Length;
            try
            {
                ProcessPacket(p.Buffer.AsSpan(0, p.Length), p.Header, looped: true);
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(p.Buffer);
            }
        }
    }

    // Looped packets still to read back: the loop must not wait for the device.
    private bool HasLooped => _looped.Count > 0;

    // At disposal: the buffers go back to the pool.
    private void DropLooped()
    {
        while (_looped.TryDequeue(out var p))
            ArrayPool<byte>.Shared.Return(p.Buffer);
        _loopedBytes = 0;
    }
}
