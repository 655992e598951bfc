namespace NetStack.Core.Stack

open NetStack.Core.Tcp
open NetStack.Core.Wire

/// The IPv4 Identification of the packets the stack sends (RFC 791 §3.2; RFC 6864 §4: unique
/// per source, destination and protocol for as long as a datagram may live, which one counter
/// for all gives). Starts where the caller's random number says. Thread-safe: the loop and the
/// threads that send UDP datagrams themselves (NetworkStack's inline sends) take numbers from it.
[<Sealed>]
type Ipv4Identification(start: int) =
    // How many identifications were taken (the next is start + taken, in 16 bits); Interlocked
    // keeps takers apart.
    [<DefaultValue>]
    val mutable private taken: int

    /// The identification for the next packet.
    member this.Next() = this.Take 1

    /// The identification of the first of `count` packets the device makes from one: a TSO or
    /// USO super-packet, which the kernel cuts into packets numbered on from ours.
    member this.Take(count: int) =
        uint16 (System.Threading.Interlocked.Add(&this.taken, count) - count + start)

/// Which of one connection's consecutive data segments leave as one TSO super-segment
/// (virtio-net GSO TCPV4/TCPV6): the device or the kernel cuts it into segments of the first
/// one's length (gso_size) and gives PSH and FIN to the last only (tcp_gso_segment). A run
/// continues while each segment continues it exactly: same connection, next sequence number
/// and send position, same ACK, window, options and flags (PSH and FIN aside), the run's
/// segments so far full-sized and no FIN yet, and the whole within one IP packet (RFC 791 total
/// length, RFC 8200 payload length: 65535). SYN, RST, URG and pure ACKs never start one.
/// One per engine loop; not thread-safe.
[<Sealed>]
type SegmentBatch() =
    let mutable count = 0
    let mutable owner: obj = null
    let mutable first = Unchecked.defaultof<OutgoingSegment>
    let mutable lastFlags = TcpFlags.None
    let mutable bytes = 0
    let mutable lastLength = 0
    let mutable headerBytes = 0
    let mutable maxPacket = 0

    static let tailFlags = TcpFlags.Psh ||| TcpFlags.Fin

    static let sameBlock (a: SackBlock) (b: SackBlock) = a.Left = b.Left && a.Right = b.Right

    // Field by field: structural equality of TcpOptions boxes its voption fields, and a run makes
    // one comparison per segment.
    static let sameOptions (a: inref<TcpOptions>) (b: inref<TcpOptions>) =
        a.MaximumSegmentSize.IsSome = b.MaximumSegmentSize.IsSome
        && (a.MaximumSegmentSize.IsNone
            || a.MaximumSegmentSize.Value = b.MaximumSegmentSize.Value)
        && a.WindowScale.IsSome = b.WindowScale.IsSome
        && (a.WindowScale.IsNone || a.WindowScale.Value = b.WindowScale.Value)
        && a.SackPermitted = b.SackPermitted
        && a.Timestamps.IsSome = b.Timestamps.IsSome
        && (a.Timestamps.IsNone
            || (a.Timestamps.Value.Value = b.Timestamps.Value.Value
                && a.Timestamps.Value.EchoReply = b.Timestamps.Value.EchoReply))
        && a.SackBlockCount = b.SackBlockCount
        && sameBlock a.Sack0 b.Sack0
        && sameBlock a.Sack1 b.Sack1
        && sameBlock a.Sack2 b.Sack2
        && sameBlock a.Sack3 b.Sack3

    /// Segments gathered (0: no run).
    member _.Count = count
    /// The connection the run belongs to.
    member _.Owner = owner
    /// The run's first segment: its header heads the super-segment.
    member _.First = first
    /// The flags of the run's last segment (PSH and FIN go on the super-segment).
    member _.LastFlags = lastFlags
    /// Payload bytes in the run.
    member _.Bytes = bytes
    /// The size the run is cut into: the first segment's payload length.
    member _.SegmentSize = first.DataLength

    /// Adds `segment` of `connection` to the run when it continues it exactly; false when it
    /// does not (the caller sends the run first, then offers the segment to `TryStart`).
    member _.TryJoin(connection: obj, segment: inref<OutgoingSegment>) =
        let continues =
            count > 0
            && obj.ReferenceEquals(owner, connection)
            && segment.DataLength > 0
            && segment.DataLength <= first.DataLength
            && lastLength = first.DataLength
            && (lastFlags &&& TcpFlags.Fin) = TcpFlags.None
            && segment.DataPosition = first.DataPosition + int64 bytes
            && segment.Seq.Value = first.Seq.Value + uint32 bytes
            && segment.Ack.Value = first.Ack.Value
            && segment.Window = first.Window
            && (segment.Flags &&& ~~~tailFlags) = (first.Flags &&& ~~~tailFlags)
            && sameOptions &segment.Options &first.Options
            && headerBytes + bytes + segment.DataLength <= maxPacket

        if continues then
            count <- count + 1
            bytes <- bytes + segment.DataLength
            lastLength <- segment.DataLength
            lastFlags <- segment.Flags

        continues

    /// Starts a run with `segment` of `connection` sent from `local` when segmentation offload
    /// is on for its family (`offload`) and the segment may head one; false: it goes alone.
    member _.TryStart(connection: obj, segment: inref<OutgoingSegment>, local: IpAddr, offload: bool) =
        let starts =
            offload
            && segment.DataLength > 0
            && (segment.Flags &&& (TcpFlags.Syn ||| TcpFlags.Rst ||| TcpFlags.Urg)) = TcpFlags.None

        if starts then
            count <- 1
            owner <- connection
            first <- segment
            lastFlags <- segment.Flags
            bytes <- segment.DataLength
            lastLength <- segment.DataLength
            headerBytes <- IpLayer.tcpPayloadOffset local segment.Options
            maxPacket <- if local.IsIpv6 then 65535 + Ipv6.HeaderLength else 65535

        starts

    /// Forgets the run (after sending it, or when a write failed).
    member _.Clear() =
        count <- 0
        owner <- null
        bytes <- 0
