namespace NetStack.Core.Tcp

open NetStack.Core.Wire
open NetStack.Core.Tcp.ConnectionBasics

/// The receive window (RFC 9293 §3.8.6.2.2, receiver-side silly window avoidance), the
/// window-update rule in its two halves (the engine's and the reader's, RFC 1122 §4.2.3.3),
/// and receive-buffer auto-tuning (dynamic right-sizing). Public for
/// `readWantsWindowUpdate`, which the API's reader calls; the rest is the engine's.
module ReceiveWindow =

    // ---- Receive window (RFC 9293 §3.8.6.2.2) ---------------------------------------------------

    /// Moves the offered right edge to the free end of the receive buffer, but only in steps of
    /// at least min(buffer/2, MSS): receiver-side silly window syndrome avoidance. The edge
    /// never moves left, which the RFC forbids ("shrinking the window", §3.8.6).
    let internal refreshWindowIn (c: byref<Connection>) =
        let inOrderEdge = c.Rcv.Irs + 1 + int c.Rcv.Delivered
        let room = c.Rcv.Consumed + int64 c.Tuning.RcvBuf - c.Rcv.Delivered
        // The 16-bit field, scaled by our shift (RFC 7323 §2.2), bounds what can be offered.
        let candidate = inOrderEdge + int (min (65535L <<< c.Rcv.WndShift) room)
        let threshold = max 1 (min (c.Tuning.RcvBuf / 2) c.Config.Mss)

        if SeqNum.gt candidate c.Rcv.Right && candidate - c.Rcv.Right >= threshold then
            c.Rcv.Right <- candidate

    /// RCV.WND as we last offered it, in bytes.
    let internal offeredWindow (c: Connection) = max 0 (c.Rcv.Right - c.Rcv.Nxt)

    /// The window-update rule (RFC 9293 §3.8.6.2.2, RFC 1122 §4.2.3.3, after Linux's
    /// tcp_cleanup_rbuf), in two halves that must agree, kept here side by side.
    ///
    /// The engine half (`Connection.receiveWindowUpdateInto`): after a read that moved the
    /// offered right edge, a pure window update goes out only when the window we had offered
    /// (`before`, in bytes) was below one MSS, where the peer may be stopped, or had shrunk to
    /// half the buffer or less and the read at least doubles it (`after`). A reader that keeps up gets its window carried by the ACKs the data triggers anyway, so an update
    /// per couple of segments read would only double the ACKs the peer has to process.
    let internal windowUpdateWorthIt (mss: int) (buffer: int) (before: int) (after: int) =
        before < mss || (2 * before <= buffer && after >= 2 * before)

    /// Below this much free receive buffer (64 KiB: the largest window a SYN can offer, and 44
    /// full-sized segments at MTU 1500) a read is always reported promptly
    /// (`readWantsWindowUpdate`).
    [<Literal>]
    let LazyWindowMinimum = 65536

    /// The reader's half of the window-update rule: true when a read must reach the engine at
    /// once (`receiveWindowUpdateInto` without delay) rather than with the next packet, timer
    /// or write. `bufferSize` is the receive buffer's size and `unreadBytes` what was delivered
    /// and not yet reported read. Prompt while the free space is at most half the buffer or
    /// below `LazyWindowMinimum`: above both, the window the engine offers with every ACK is
    /// already more than half the buffer and at least 64 KiB, so by the engine's half
    /// (`windowUpdateWorthIt`) no pure window update would go out and no peer waits for one.
    /// Pure arithmetic, so the reader may call it on its own thread.
    let readWantsWindowUpdate (bufferSize: int) (unreadBytes: int64) : bool =
        let free = int64 bufferSize - unreadBytes
        2L * free <= int64 bufferSize || free < int64 LazyWindowMinimum

    // ---- Receive-buffer auto-tuning (dynamic right-sizing) --------------------------------------

    /// Receiver-side round-trip measurement (after Linux's tcp_rcv_rtt_measure_ts): a full-sized
    /// data segment whose TSecr echoes a TSval not measured with yet left the peer about one
    /// round trip after we sent that TSval (RFC 7323 §4: the peer echoes our latest timestamp).
    /// The estimate follows the smallest samples at once and rises only by 1/8 per sample,
    /// since a peer that holds data back makes samples longer than the path.
    let internal measureReceiverRttIn (now: int64) (seg: inref<Segment>) (c: byref<Connection>) =
        match seg.Options.Timestamps with
        | ValueSome ts when
            c.Ts.Enabled
            && c.Config.ReceiveBufferLimit > c.Tuning.RcvBuf
            && ts.EchoReply <> 0u
            && ts.EchoReply <> c.Tuning.RcvRttEcho
            && seg.PayloadLength >= c.Rcv.Mss
            ->
            let ms = int (uint32 (now / 1000L) + c.Ts.Offset - ts.EchoReply)

            if ms < 0 || int64 ms * 1000L > c.Config.MaxRto then
                ()
            else
                // The timestamp clock ticks in ms: 0 means "under a millisecond", taken as one.
                let sample = max 1000L (int64 ms * 1000L)

                let rtt =
                    if c.Tuning.RcvRtt = 0L || sample < c.Tuning.RcvRtt then
                        sample
                    else
                        c.Tuning.RcvRtt - c.Tuning.RcvRtt / 8L + sample / 8L

                c.Tuning.RcvRtt <- rtt
                c.Tuning.RcvRttEcho <- ts.EchoReply
        | _ -> ()

    /// Receive-buffer auto-tuning (dynamic right-sizing, after Linux's tcp_rcv_space_adjust).
    /// Once per receiver round trip (the timestamp estimate, else the sender's SRTT) it looks at
    /// how much the reader consumed per round trip. A reader that took more than half the
    /// buffer is limited by the window (a buffer B sustains at most B per round trip, and a
    /// sender in slow start wants twice last round's), so the buffer grows to twice that
    /// consumption plus four segments of headroom (data held out of order after a loss, reads
    /// that come in bursts), up to `Config.ReceiveBufferLimit`. An idle or slow reader never
    /// grows it. The buffer never shrinks, so the offered right edge never moves left (RFC 9293
    /// §3.8.6), and the shift chosen at SYN time covers the limit (RFC 7323 §2.3). The caller
    /// learns the size from `ReceiveBufferGrown` before any segment offers the larger window.
    let internal tuneReceiveBuffer (now: int64) (out: TcpActions) (c: Connection) =
        // Without window scaling no window beyond 65535 can be offered: growing past it is waste.
        let limit =
            if c.WindowScaled then
                c.Config.ReceiveBufferLimit
            else
                max c.Tuning.RcvBuf (min 65535 c.Config.ReceiveBufferLimit)

        let rtt =
            if c.Tuning.RcvRtt > 0L then c.Tuning.RcvRtt
            elif c.Timers.Rtt.HasSample then max 1000L c.Timers.Rtt.Srtt
            else 0L

        match c.Tuning.RcvSpaceFrom with
        | _ when c.Tuning.RcvBuf >= limit -> c
        | ValueNone ->
            { c with
                Tuning.RcvSpaceFrom = ValueSome(struct (now, c.Rcv.Consumed))
            }
        | ValueSome(struct (since, from)) when rtt > 0L && now - since >= rtt ->
            // Reads may come in bursts: the count is scaled to one round trip.
            let perRtt = (c.Rcv.Consumed - from) * rtt / (now - since)

            let c =
                { c with
                    Tuning.RcvSpaceFrom = ValueSome(struct (now, c.Rcv.Consumed))
                }

            if 2L * perRtt > int64 c.Tuning.RcvBuf then
                let size = int (min (int64 limit) (2L * perRtt + 4L * int64 c.Rcv.Mss))
                out.Add(TcpAction.ReceiveBufferGrown size)
                { c with Tuning.RcvBuf = size }
            else
                c
        | _ -> c
