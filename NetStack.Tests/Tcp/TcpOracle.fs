/// The TCP state oracle: StateModel as an independent judge of the engine. For every input to one
/// connection (a segment from the peer, a user call, a timer) it works out the triggers itself,
/// from what a test can see from outside (the segments the test sent, the segments the engine
/// sent, the calls it made, its clock) and from RFC rules re-stated here, asks the model where
/// they lead, and the caller fails the test on any difference with the engine's transitions and
/// state. It never calls the engine's private helpers and reads none of its sequence variables.
///
/// The peer it classifies for is a consistent TCP (its byte stream has one length, its FIN comes
/// after the last byte) plus blind attackers (segments far outside the window, RSTs and SYNs
/// anywhere): RFC 9293 says what must happen to those. A peer that contradicts itself (a FIN in
/// the middle of data it sent before) is left to the hostile property tests, which check the
/// engine's invariants only. Options: the peer offers none but the MSS (no window scaling,
/// timestamps or SACK), so window fields are byte counts and PAWS does not apply.
///
/// One thing is taken from the engine: *when* its retransmission and persist timers expire
/// (`RetransmitAt`, `PersistAt`). Those deadlines come from the RTT estimator (RFC 6298, tested in
/// its own right); re-deriving them would mean a second estimator. What an expiry means (how many
/// since the last progress, against the configured limits) is counted here. TIME-WAIT's 2·MSL,
/// FIN-WAIT-2's timeout and the user timeout are timed here.
///
/// Each input kind has its function: `segment`, `call`, `timer`, `icmp`.
module NetStack.Tests.TcpOracle

open System
open System.Collections.Generic
open NetStack.Core.Wire
open NetStack.Core.Tcp

/// A user call (RFC 9293 §3.10.1–§3.10.5, and the receive-side window update).
[<RequireQualifiedAccess>]
type UserCall =
    | ActiveOpen
    | PassiveOpen
    | Send of bytes: int64
    | Receive of bytes: int64
    | Close
    | Abort

/// What the oracle knows of one connection. Sequence numbers of the engine's side come from the
/// segments it sent and the ACKs the peer sent; those of the peer's side from the peer's segments
/// and the windows the engine offered.
type View =
    {
        Config: TcpConfig
        /// The engine's ISS: the test chose it.
        Iss: SeqNum
        /// The peer's stream length: its FIN's position.
        PeerLength: int
        /// Opened passively (LISTEN, then the peer's SYN), not by our own SYN.
        mutable Passive: bool
        /// The state the model says the connection is in.
        mutable State: TcpState

        // ---- The engine's send space --------------------------------------------------------
        /// The oldest sequence number the peer acknowledged (acceptably).
        mutable SndUna: SeqNum
        /// Just past the highest sequence number the engine sent (SYN and FIN count).
        mutable SndMax: SeqNum
        /// Bytes the user handed to SEND.
        mutable Written: int64
        /// CLOSE was called: the FIN is queued or sent (its number is ISS + 1 + Written).
        mutable Closed: bool
        /// A CLOSE in SYN-RECEIVED after a SEND: it waits for ESTABLISHED (§3.10.4).
        mutable CloseQueued: bool
        /// The send window variables of §3.10.7.4's fifth step, for RFC 5961 §5.2's MAX.SND.WND.
        mutable SndWl1: SeqNum
        mutable SndWl2: SeqNum
        mutable MaxSndWnd: int

        // ---- The peer's send space as the engine must see it ---------------------------------
        mutable Irs: SeqNum voption
        mutable RcvNxt: SeqNum
        /// The right edge of the window the engine last offered (ACK + window of its last ACK;
        /// IRS + 1 before any: nothing offered yet).
        mutable RightEdge: SeqNum
        /// Peer stream positions received in the window.
        Got: bool[]
        /// Peer stream positions delivered in order.
        mutable Delivered: int64
        /// Where the peer's FIN was seen (a position), before it is taken.
        mutable PeerFinAt: int64 voption
        mutable FinReceived: bool
        /// Bytes the user read.
        mutable Consumed: int64

        // ---- Timers -------------------------------------------------------------------------
        /// TIME-WAIT's 2·MSL or FIN-WAIT-2's timeout.
        mutable LingerDeadline: int64 voption
        /// Retransmission timer expiries since SND.UNA last advanced.
        mutable Retries: int
        /// Zero-window probes since the last acceptable ACK.
        mutable ProbesUnanswered: int
        /// The user timeout's start (RFC 5482), and the acknowledged position it saw.
        mutable StalledSince: int64 voption
        mutable StalledAcked: int64

        // ---- What the current input did ---------------------------------------------------
        /// The transitions the model says the input makes (edges and reentries).
        Expected: ResizeArray<StateTransition>
        /// Every trigger the oracle derived, with the state it met (ignored and refused ones too).
        Classified: ResizeArray<struct (TcpState * TcpTrigger)>
        /// RCV.NXT when the segment's text was looked at (what ACKs sent before that carry).
        mutable TextFrom: SeqNum voption
        /// Delivered before the input.
        mutable DeliveredBefore: int64
    }

/// A fresh view of a connection the test is about to open with ISS `iss`, whose peer will send
/// `peerLength` bytes.
let create (config: TcpConfig) (iss: SeqNum) (peerLength: int) : View =
    {
        Config = config
        Iss = iss
        PeerLength = peerLength
        Passive = false
        State = TcpState.Closed
        SndUna = iss
        SndMax = iss
        Written = 0L
        Closed = false
        CloseQueued = false
        SndWl1 = SeqNum 0u
        SndWl2 = SeqNum 0u
        MaxSndWnd = 0
        Irs = ValueNone
        RcvNxt = SeqNum 0u
        RightEdge = SeqNum 0u
        Got = Array.zeroCreate peerLength
        Delivered = 0L
        PeerFinAt = ValueNone
        FinReceived = false
        Consumed = 0L
        LingerDeadline = ValueNone
        Retries = 0
        ProbesUnanswered = 0
        StalledSince = ValueNone
        StalledAcked = 0L
        Expected = ResizeArray()
        Classified = ResizeArray()
        TextFrom = ValueNone
        DeliveredBefore = 0L
    }

/// Starts a new input: forgets what the previous one did.
let beginInput (v: View) =
    v.Expected.Clear()
    v.Classified.Clear()
    v.TextFrom <- ValueNone
    v.DeliveredBefore <- v.Delivered

/// The sequence number of the engine's FIN: just past the last byte written.
let finSeq (v: View) = v.Iss + 1 + int v.Written

/// Our FIN is acknowledged.
let finAcked (v: View) =
    v.Closed && SeqNum.gt v.SndUna (finSeq v)

/// The peer's stream position of sequence number `s`.
let private positionOf (v: View) (s: SeqNum) = int64 (s - (v.Irs.Value + 1))

/// States that take the peer's text and FIN (RFC 9293 §3.10.7.4 seventh and eighth steps).
let private takesText (state: TcpState) =
    match state with
    | TcpState.Established
    | TcpState.FinWait1
    | TcpState.FinWait2 -> true
    | _ -> false

/// States in which data or our FIN can wait for an acknowledgment.
let private sends (state: TcpState) =
    match state with
    | TcpState.Established
    | TcpState.CloseWait
    | TcpState.FinWait1
    | TcpState.Closing
    | TcpState.LastAck -> true
    | _ -> false

/// The input makes `trigger` happen: the model says where it leads (ignored and not permitted:
/// nowhere, the state stays). Entering TIME-WAIT starts 2·MSL (§3.10.7.4 eighth step), entering
/// FIN-WAIT-2 its timeout (TcpConfig.FinWait2Timeout), CLOSED stops every timer.
let fire (v: View) (now: int64) (trigger: TcpTrigger) =
    v.Classified.Add(struct (v.State, trigger))

    match StateModel.target v.State trigger with
    | ValueSome next ->
        v.Expected.Add
            {
                From = v.State
                Trigger = trigger
                To = next
            }

        v.State <- next

        v.LingerDeadline <-
            match next with
            | TcpState.TimeWait -> ValueSome(now + 2L * v.Config.Msl)
            | TcpState.FinWait2 -> v.Config.FinWait2Timeout |> ValueOption.map (fun t -> now + t)
            | _ -> ValueNone
    | ValueNone -> ()

/// The ISN of the peer is `seg.Seq`: what a SYN teaches (§3.10.7.2, §3.10.7.3), and the window
/// in it. Nothing is offered back yet: the window's right edge is IRS + 1.
let private learnSyn (v: View) (seg: Segment) =
    v.Irs <- ValueSome seg.Seq
    v.RcvNxt <- seg.Seq + 1
    v.RightEdge <- seg.Seq + 1
    v.SndWl1 <- seg.Seq
    v.SndWl2 <- seg.Ack
    v.MaxSndWnd <- max v.MaxSndWnd (int seg.Window)

/// SND.UNA moves to `ack`: progress, so the retransmission count starts again.
let private advance (v: View) (ack: SeqNum) =
    if SeqNum.gt ack v.SndUna then
        v.SndUna <- ack
        v.Retries <- 0

/// RFC 9293 §3.10.7.4 first step, the acceptability test:
///
///     Length  Window  Test
///     0       0       SEG.SEQ = RCV.NXT
///     0       >0      RCV.NXT =< SEG.SEQ < RCV.NXT+RCV.WND
///     >0      0       not acceptable
///     >0      >0      RCV.NXT =< SEG.SEQ < RCV.NXT+RCV.WND
///                     or RCV.NXT =< SEG.SEQ+SEG.LEN-1 < RCV.NXT+RCV.WND
///
/// RCV.WND is what the engine last offered (never negative). One exception, documented by the
/// engine and done by Linux: a bare FIN at RCV.NXT in a zero window is acceptable (it needs no
/// buffer space).
let acceptable (v: View) (seg: Segment) =
    let window = max 0 (v.RightEdge - v.RcvNxt)
    let right = v.RcvNxt + window
    let length = seg.Length

    if length = 0 then
        if window = 0 then
            seg.Seq = v.RcvNxt
        else
            SeqNum.inWindow v.RcvNxt seg.Seq right
    elif window = 0 then
        seg.Seq = v.RcvNxt
        && seg.PayloadLength = 0
        && seg.Has TcpFlags.Fin
        && not (seg.Has TcpFlags.Syn)
    else
        SeqNum.inWindow v.RcvNxt seg.Seq right
        || SeqNum.inWindow v.RcvNxt (seg.Seq + (length - 1)) right

/// The engine's segments that carry an ACK (a RST never does here, except the CLOSED reply).
let private acking (s: OutgoingSegment) =
    s.Flags.HasFlag TcpFlags.Ack && not (s.Flags.HasFlag TcpFlags.Rst)

/// An action of the engine's receive path (RFC 9293 §3.10.7.4 seventh and eighth steps): data
/// stored or delivered, or the peer's FIN taken. ACKs before the first of them were sent before
/// the segment's text was looked at (retransmissions during the ACK step).
let private receivePhase (a: TcpAction) =
    match a with
    | TcpAction.StoreReceived _
    | TcpAction.Deliver _
    | TcpAction.Event TcpEvent.PeerClosed -> true
    | _ -> false

/// The window's right edge when the engine looked at the segment's text: the edge offered by the
/// last ACK it sent before its receive path ran (`receivePhase`), or the one before this input.
/// When the receive path did nothing visible, the edge before this input: edges only grow, so if
/// nothing fits that one, nothing had to be taken.
let private edgeAtText (v: View) (actions: TcpAction list) =
    let rec walk edge (actions: TcpAction list) =
        match actions with
        | [] -> v.RightEdge
        | a :: _ when receivePhase a -> edge
        | TcpAction.Transmit s :: rest when acking s -> walk (s.Ack + int s.Window) rest
        | _ :: rest -> walk edge rest

    walk v.RightEdge actions

/// §3.10.7.4 seventh and eighth steps for the peer's text and FIN, in ESTABLISHED, FIN-WAIT-1 and
/// FIN-WAIT-2: the data inside the window (up to its right edge, never past the peer's FIN) is
/// kept; RCV.NXT moves over what is now in order. A FIN counts when nothing of the segment was cut
/// off at the right edge (the FIN itself needs no room, so it may sit at the edge); it is taken
/// once everything before it is in: ESTABLISHED → CLOSE-WAIT; FIN-WAIT-1 → CLOSING, or TIME-WAIT
/// when our FIN is acknowledged too ("perhaps in this segment", Figure 5 note 2); FIN-WAIT-2 →
/// TIME-WAIT.
let private takeText (v: View) (now: int64) (edge: SeqNum) (seg: Segment) =
    v.TextFrom <- ValueSome v.RcvNxt
    let start = v.Irs.Value + 1
    let dataStart = seg.Seq + (if seg.Has TcpFlags.Syn then 1 else 0)
    let dataEnd = dataStart + seg.PayloadLength

    let limit =
        match v.PeerFinAt with
        | ValueSome at -> SeqNum.min edge (start + int at)
        | ValueNone -> edge

    let lo = SeqNum.max dataStart v.RcvNxt
    let hi = SeqNum.min dataEnd limit

    if SeqNum.lt lo hi then
        if positionOf v hi > int64 v.Got.Length then
            failwith $"the test's peer sent past the end of its {v.Got.Length}-byte stream"

        for p in positionOf v lo .. positionOf v hi - 1L do
            v.Got.[int p] <- true

    while v.Delivered < int64 v.Got.Length && v.Got.[int v.Delivered] do
        v.Delivered <- v.Delivered + 1L

    v.RcvNxt <- start + int v.Delivered

    if
        seg.Has TcpFlags.Fin
        && v.PeerFinAt.IsNone
        && SeqNum.ge dataEnd v.RcvNxt
        && SeqNum.le dataEnd edge
    then
        v.PeerFinAt <- ValueSome(positionOf v dataEnd)

    if v.PeerFinAt = ValueSome v.Delivered && not v.FinReceived then
        v.FinReceived <- true
        v.RcvNxt <- v.RcvNxt + 1

        match v.State with
        | TcpState.FinWait1 when finAcked v -> fire v now TcpTrigger.RcvFinAckOfFin
        | _ -> fire v now TcpTrigger.RcvFin

/// §3.10.7.4 fifth step in ESTABLISHED and later, with RFC 5961 §5.2: an ACK of something not yet
/// sent (above SND.MAX, the RFC's SND.NXT before any timeout pulled it back) or older than
/// SND.UNA − MAX.SND.WND is answered and the segment dropped; otherwise SND.UNA advances and the
/// send window follows the update rule ("If SND.WL1 < SEG.SEQ or (SND.WL1 = SEG.SEQ and SND.WL2
/// =< SEG.ACK)"), whose largest window is MAX.SND.WND. Any acceptable ACK answers a zero-window
/// probe. Returns whether processing goes on.
let private takeAck (v: View) (seg: Segment) =
    if SeqNum.gt seg.Ack v.SndMax then
        false
    elif SeqNum.lt seg.Ack (v.SndUna - v.MaxSndWnd) then
        false
    else
        advance v seg.Ack

        if
            SeqNum.ge seg.Ack v.SndUna
            && (SeqNum.lt v.SndWl1 seg.Seq || (v.SndWl1 = seg.Seq && SeqNum.le v.SndWl2 seg.Ack))
        then
            v.SndWl1 <- seg.Seq
            v.SndWl2 <- seg.Ack
            v.MaxSndWnd <- max v.MaxSndWnd (int seg.Window)

        v.ProbesUnanswered <- 0
        true

/// A SYN in a synchronized state. RFC 5961 §4.2: answered with a challenge ACK, the state stays
/// (the model ignores RcvSyn there).
let private synchronizedSyn (v: View) (now: int64) (_seg: Segment) = fire v now TcpTrigger.RcvSyn

/// RFC 6191 §2 (refining RFC 1122 §4.2.2.13; RFC 9293 §3.6.1 MAY-2): may a SYN for a 4-tuple in
/// TIME-WAIT open a new incarnation? `rcvNxt` is RCV.NXT of the connection in TIME-WAIT (just
/// past the peer's FIN), `tsRecent` its TS.Recent when RFC 7323 timestamps are on for it
/// (ValueNone when they are off). With timestamps on the connection and in the SYN: accept a
/// TSval newer than TS.Recent, or an equal one with SEG.SEQ beyond RCV.NXT, and refuse any other
/// (an older TSval marks an old duplicate whatever its sequence number). Otherwise: accept when
/// SEG.SEQ lies beyond RCV.NXT, past everything the old incarnation carried. "Newer" and
/// "beyond" are modulo 2^32, ahead by 1 .. 2^31 - 1 (RFC 7323 §5.2, RFC 9293 §3.4). This is
/// Linux's rule too (tcp_timewait_state_process: after(seq, tw_rcv_nxt) or a newer tsval).
let reopensTimeWait (seg: Segment) (rcvNxt: SeqNum) (tsRecent: uint32 voption) =
    let beyond = int (seg.Seq.Value - rcvNxt.Value) > 0

    match tsRecent, seg.Options.Timestamps with
    | ValueSome recent, ValueSome ts ->
        let newer = int (ts.Value - recent)
        newer > 0 || (newer = 0 && beyond)
    | _ -> beyond

/// A SYN (no ACK, no RST) in TIME-WAIT, before any other check of §3.10.7.4 (RFC 6191 decides,
/// not the window): one `reopensTimeWait` accepts ends the connection (RcvReopeningSyn, and the
/// SYN goes to the listener); any other is the fourth step's SYN, answered with a challenge ACK
/// (RcvSyn, ignored). The oracle's peer never offers timestamps (see the module comment), so
/// RFC 7323 is off here, there is no TS.Recent, and the sequence-number half of the rule
/// decides; the timestamp half is held against the engine by the TIME-WAIT simulation, with
/// this same function.
let private timeWaitSyn (v: View) (now: int64) (seg: Segment) =
    if reopensTimeWait seg v.RcvNxt ValueNone then
        fire v now TcpTrigger.RcvReopeningSyn
    else
        fire v now TcpTrigger.RcvSyn

/// §3.10.7.4 for SYN-RECEIVED and the synchronized states.
let private synchronized (v: View) (now: int64) (seg: Segment) (actions: TcpAction list) =
    if
        v.State = TcpState.SynReceived
        && seg.Has TcpFlags.Syn
        && not (seg.Has TcpFlags.Ack)
        && v.Irs = ValueSome seg.Seq
    then
        // The peer's SYN again (our SYN,ACK was lost): answered, no change.
        fire v now TcpTrigger.RcvSyn
    elif
        v.State = TcpState.TimeWait
        && seg.Has TcpFlags.Syn
        && not (seg.Has TcpFlags.Ack)
        && not (seg.Has TcpFlags.Rst)
    then
        timeWaitSyn v now seg
    elif not (acceptable v seg) then
        // First step: an unacceptable segment is acknowledged and dropped (a RST just dropped).
        // The peer's FIN again, when ours or its ACK was lost, is the eighth step's "FIN bit set"
        // in CLOSE-WAIT, CLOSING, LAST-ACK and TIME-WAIT (the last restarts 2·MSL): it ends
        // exactly at RCV.NXT, which is past the FIN.
        if
            not (seg.Has TcpFlags.Rst)
            && seg.Has TcpFlags.Fin
            && v.FinReceived
            && seg.Seq + seg.Length = v.RcvNxt
        then
            fire v now TcpTrigger.RcvFin
    elif seg.Has TcpFlags.Rst then
        // Second step, RFC 5961 §3.2: only a RST exactly at RCV.NXT resets; one elsewhere in the
        // window gets a challenge ACK. In TIME-WAIT too (not RFC 1337 §3's "ignore them all", as
        // Linux with tcp_rfc1337=0): the RST at RCV.NXT ends it, any other is ignored.
        if seg.Seq = v.RcvNxt then
            fire v now TcpTrigger.RcvRst
    elif seg.Has TcpFlags.Syn then
        // Fourth step.
        synchronizedSyn v now seg
    elif not (seg.Has TcpFlags.Ack) then
        // Fifth step: "if the ACK bit is off, drop the segment and return".
        ()
    else
        let goOn =
            if v.State = TcpState.SynReceived then
                // "If SND.UNA < SEG.ACK =< SND.NXT, then enter ESTABLISHED state and continue
                // processing"; otherwise the segment gets a RST and is dropped.
                if SeqNum.lt v.SndUna seg.Ack && SeqNum.le seg.Ack v.SndMax then
                    fire v now TcpTrigger.RcvAckOfSyn
                    v.SndWl1 <- seg.Seq
                    v.SndWl2 <- seg.Ack
                    v.MaxSndWnd <- max v.MaxSndWnd (int seg.Window)
                    let goOn = takeAck v seg

                    // A CLOSE queued in SYN-RECEIVED is ESTABLISHED's CLOSE now (§3.10.4).
                    if v.CloseQueued then
                        v.CloseQueued <- false
                        fire v now TcpTrigger.Close

                    goOn
                else
                    false
            else
                takeAck v seg

        if goOn then
            // The ACK of our FIN: CLOSING → TIME-WAIT, LAST-ACK → CLOSED (and the segment is
            // done); FIN-WAIT-1 waits for the text, which may hold the peer's FIN too.
            let goOn =
                match v.State with
                | TcpState.Closing when finAcked v ->
                    fire v now TcpTrigger.RcvAckOfFin
                    true
                | TcpState.LastAck when finAcked v ->
                    fire v now TcpTrigger.RcvAckOfFin
                    false
                | _ -> true

            if goOn then
                // FIN-WAIT-2's timer counts from the peer's last segment that got this far.
                if v.State = TcpState.FinWait2 then
                    v.LingerDeadline <- v.Config.FinWait2Timeout |> ValueOption.map (fun t -> now + t)

                if takesText v.State then
                    takeText v now (edgeAtText v actions) seg

                // "If the FIN segment is now acknowledged, then enter FIN-WAIT-2".
                if v.State = TcpState.FinWait1 && finAcked v then
                    fire v now TcpTrigger.RcvAckOfFin

/// Classifies a segment from the peer, arriving at `now`, for which the engine produced `actions`
/// (read only for the window edge in force at its receive step and, afterwards, for what the
/// engine sent).
let segment (v: View) (now: int64) (seg: Segment) (actions: TcpAction list) =
    match v.State with
    | TcpState.Closed ->
        // §3.10.7.1: a RST is discarded, anything else answered with a RST.
        if seg.Has TcpFlags.Rst then
            fire v now TcpTrigger.RcvRst
    | TcpState.Listen ->
        // §3.10.7.2: a RST is ignored, an ACK answered with a RST, a SYN starts the connection
        // (its text and FIN are not taken: not acknowledged, so the peer sends them again).
        if seg.Has TcpFlags.Rst then
            fire v now TcpTrigger.RcvRst
        elif seg.Has TcpFlags.Ack then
            ()
        elif seg.Has TcpFlags.Syn then
            learnSyn v seg
            fire v now TcpTrigger.RcvSyn
    | TcpState.SynSent ->
        // §3.10.7.3. The ACK is acceptable when ISS < SEG.ACK =< SND.NXT; a RST counts only with
        // an acceptable ACK; a SYN with one completes the handshake and goes on to the text (with
        // nothing offered yet, no data fits; a FIN right after the SYN does), a SYN without an
        // ACK is a simultaneous open.
        let hasAck = seg.Has TcpFlags.Ack
        let ackOk = hasAck && SeqNum.gt seg.Ack v.Iss && SeqNum.le seg.Ack v.SndMax

        if hasAck && not ackOk then
            ()
        elif seg.Has TcpFlags.Rst then
            if ackOk then
                fire v now TcpTrigger.RcvRst
        elif seg.Has TcpFlags.Syn then
            learnSyn v seg

            if ackOk then
                advance v seg.Ack
                fire v now TcpTrigger.RcvSynAck
                takeText v now (edgeAtText v actions) seg
            else
                fire v now TcpTrigger.RcvSyn
    | _ -> synchronized v now seg actions

/// Classifies a user call (RFC 9293 §3.10). Returns false when the call must be refused (a SEND
/// the state does not allow: the engine throws, and nothing changes).
let call (v: View) (now: int64) (c: UserCall) : bool =
    match c with
    | UserCall.ActiveOpen ->
        fire v now TcpTrigger.ActiveOpen
        true
    | UserCall.PassiveOpen ->
        v.Passive <- true
        fire v now TcpTrigger.PassiveOpen
        true
    | UserCall.Send bytes ->
        // §3.10.2: SEND is taken in SYN-SENT and SYN-RECEIVED (queued) and in ESTABLISHED and
        // CLOSE-WAIT, until CLOSE; elsewhere "error: connection closing / does not exist". (The
        // RFC's SEND in LISTEN, which would turn it active, is not offered: see StateModelTests.)
        let allowed =
            not v.Closed
            && (match v.State with
                | TcpState.SynSent
                | TcpState.SynReceived
                | TcpState.Established
                | TcpState.CloseWait -> true
                | _ -> false)

        if allowed then
            v.Written <- v.Written + bytes

        allowed
    | UserCall.Receive bytes ->
        v.Consumed <- v.Consumed + bytes
        true
    | UserCall.Close ->
        // §3.10.4. SYN-RECEIVED: "If no SENDs have been issued and there is no pending data to
        // send, then form a FIN segment and send it, and enter FIN-WAIT-1 state; otherwise, queue
        // for processing after entering ESTABLISHED state." The closing states ignore a second
        // CLOSE; CLOSED refuses it.
        match v.State with
        | TcpState.SynReceived when v.Closed -> ()
        | TcpState.SynReceived when v.Written > 0L ->
            v.Closed <- true
            v.CloseQueued <- true
        | TcpState.SynReceived
        | TcpState.Established
        | TcpState.CloseWait ->
            v.Closed <- true
            fire v now TcpTrigger.Close
        | _ -> fire v now TcpTrigger.Close

        true
    | UserCall.Abort ->
        fire v now TcpTrigger.Abort
        true

/// The engine's acknowledged send position (data only).
let private ackedPosition (v: View) =
    max 0L (min v.Written (int64 (v.SndUna - (v.Iss + 1))))

/// Classifies a timer run at `now`; `retransmitDue` and `persistDue` say whether the engine's
/// retransmission and persist timers had expired (see the module comment). In the engine's
/// order: the linger timer (TIME-WAIT 2·MSL → TimeWaitTimeout; FIN-WAIT-2's timeout → Timeout),
/// the user timeout (RFC 9293 §3.10.8, RFC 5482: data or our FIN unacknowledged, without
/// progress, for UserTimeout since the first timer run that found it so), the retransmission
/// timer (§3.8.3 R2: the limit'th retransmission is the last; SYN-SENT and SYN-RECEIVED use the
/// SYN limit), the persist timer (MaxRetransmissions zero-window probes without an acceptable ACK
/// end the connection).
let timer (v: View) (now: int64) (retransmitDue: bool) (persistDue: bool) =
    let due =
        match v.LingerDeadline with
        | ValueSome t -> t <= now
        | ValueNone -> false

    if due && v.State = TcpState.TimeWait then
        fire v now TcpTrigger.TimeWaitTimeout
    elif due && v.State = TcpState.FinWait2 then
        fire v now TcpTrigger.Timeout
    elif v.State <> TcpState.Closed then
        let userTimedOut =
            match v.Config.UserTimeout with
            | ValueNone -> false
            | ValueSome timeout ->
                let acked = ackedPosition v
                let stalled = sends v.State && (v.Written > acked || v.SndMax <> v.SndUna)

                if not stalled then
                    v.StalledSince <- ValueNone
                    false
                elif v.StalledSince.IsNone || acked <> v.StalledAcked then
                    v.StalledSince <- ValueSome now
                    v.StalledAcked <- acked
                    false
                else
                    now - v.StalledSince.Value >= timeout

        if userTimedOut then
            fire v now TcpTrigger.Timeout
        else
            let handshake = v.State = TcpState.SynSent || v.State = TcpState.SynReceived

            // An expiry with nothing outstanding (after the SYN) retransmits nothing: not counted.
            if retransmitDue && (handshake || v.SndUna <> v.SndMax) then
                v.Retries <- v.Retries + 1

            let limit =
                if handshake then
                    v.Config.MaxSynRetransmissions
                else
                    v.Config.MaxRetransmissions

            if retransmitDue && v.Retries > limit then
                fire v now TcpTrigger.Timeout
            elif persistDue && v.ProbesUnanswered >= v.Config.MaxRetransmissions then
                fire v now TcpTrigger.Timeout

/// What an ICMP error about one of our segments means to TCP, by family, type and code.
type IcmpMeaning =
    /// Not about reachability (redirect, source quench (RFC 6633), unknown codes): nothing.
    | NoMatter
    /// "Fragmentation needed" (RFC 1191) / "packet too big" (RFC 8201): segments get smaller,
    /// the state stays.
    | TooBig
    /// The peer cannot be reached or has no such connection: the connection ends.
    | HardError
    /// Maybe transient: fails a connection attempt, is remembered on an open connection.
    | SoftError

/// RFC 1122 §4.2.3.9 for ICMPv4: destination unreachable codes 2 and 3 (protocol, port) are hard,
/// code 4 is path MTU discovery (RFC 1191), codes 0, 1 and 5 are soft, and so are the codes RFC
/// 1812 §5.2.7.1 added (6–15), time exceeded and parameter problem; Linux ignores unreachable
/// codes above 15. ICMPv6 (RFC 4443 §3, which does not say hard or soft): as Linux's
/// icmpv6_err_convert, administratively prohibited (1), port unreachable (4), source address
/// failed policy (5), reject route (6), unknown codes and parameter problem are hard; no route
/// (0), beyond scope (2), address unreachable (3) and time exceeded soft.
let icmpMeaning (ipv6: bool) (icmpType: byte) (code: byte) =
    match ipv6, icmpType with
    | false, 3uy ->
        match code with
        | 2uy
        | 3uy -> HardError
        | 4uy -> TooBig
        | c when c <= 15uy -> SoftError
        | _ -> NoMatter
    | false, 11uy
    | false, 12uy -> SoftError
    | true, 1uy ->
        match code with
        | 0uy
        | 2uy
        | 3uy -> SoftError
        | _ -> HardError
    | true, 2uy -> TooBig
    | true, 3uy -> SoftError
    | true, 4uy -> HardError
    | _ -> NoMatter

/// Classifies an ICMP error quoting our segment numbered `quotedSeq`. RFC 5927 §4.1: only one
/// about data in flight counts, SND.UNA =< SEG.SEQ < SND.MAX (nothing is in flight in CLOSED,
/// LISTEN, FIN-WAIT-2 and TIME-WAIT). A hard error aborts the connection (RFC 1122 §4.2.3.9);
/// a soft one fails a connection attempt, SYN-SENT or the SYN-RECEIVED of a simultaneous open (as
/// Linux's tcp_v4_err), and is otherwise only remembered for a later timeout.
let icmp (v: View) (now: int64) (ipv6: bool) (icmpType: byte) (code: byte) (quotedSeq: SeqNum) =
    let inFlight = SeqNum.le v.SndUna quotedSeq && SeqNum.lt quotedSeq v.SndMax

    let attempt =
        v.State = TcpState.SynSent || (v.State = TcpState.SynReceived && not v.Passive)

    if v.State <> TcpState.Closed && v.State <> TcpState.Listen && inFlight then
        match icmpMeaning ipv6 icmpType code with
        | HardError -> fire v now TcpTrigger.IcmpHardError
        | SoftError when attempt -> fire v now TcpTrigger.IcmpHardError
        | _ -> ()

/// After an input: what the engine sent updates the view (SND.MAX, the offered window, zero-window
/// probes), and what it did must agree with the view: every ACK acknowledges exactly the peer's
/// data in order (those sent before its receive path ran, what was in order before the segment's
/// text), the data delivered is the data in order, a FIN comes only after CLOSE and at the end of
/// the written stream. Returns the first disagreement.
let observe (v: View) (actions: TcpAction list) : string option =
    let mutable problem = None
    let mutable inText = false
    let before = v.TextFrom |> ValueOption.defaultValue v.RcvNxt

    if
        v.Delivered <> v.DeliveredBefore
        && not (actions |> List.exists (fun a -> a.IsDeliver))
    then
        problem <- Some $"nothing delivered, the peer's data is in order up to {v.Delivered}"

    for a in actions do
        if receivePhase a then
            inText <- true

        match a with
        | TcpAction.Transmit s when not (s.Flags.HasFlag TcpFlags.Rst) ->
            let length =
                s.DataLength
                + (if s.Flags.HasFlag TcpFlags.Syn then 1 else 0)
                + (if s.Flags.HasFlag TcpFlags.Fin then 1 else 0)

            v.SndMax <- SeqNum.max v.SndMax (s.Seq + length)

            if s.Flags.HasFlag TcpFlags.Fin && problem.IsNone then
                if not v.Closed then
                    problem <- Some "a FIN before CLOSE"
                elif s.Seq + s.DataLength <> finSeq v then
                    problem <- Some $"a FIN at {s.Seq + s.DataLength}, the stream ends at {finSeq v}"

            if acking s && v.Irs.IsSome then
                let expected = if inText then v.RcvNxt else before

                if s.Ack <> expected && problem.IsNone then
                    problem <- Some $"an ACK of {s.Ack}, the peer's data is in order up to {expected}"

                v.RightEdge <- s.Ack + int s.Window

            // A zero-window probe (RFC 9293 §3.8.6.1): an ACK numbered SND.UNA - 1, no data.
            if
                acking s
                && s.DataLength = 0
                && not (s.Flags.HasFlag TcpFlags.Syn || s.Flags.HasFlag TcpFlags.Fin)
                && s.Seq = v.SndUna - 1
            then
                v.ProbesUnanswered <- v.ProbesUnanswered + 1
        | TcpAction.Deliver upTo when upTo <> v.Delivered && problem.IsNone ->
            problem <- Some $"delivered up to {upTo}, the peer's data is in order up to {v.Delivered}"
        | _ -> ()

    problem

/// The (state, trigger) pairs of the model: transitions, reentries and ignores, with their kind.
let modelEntries (states: TcpState list) (triggers: TcpTrigger list) =
    [
        for s in states do
            for t in triggers do
                match StateModel.target s t with
                | ValueSome next when next = s -> yield struct (s, t), "reentry"
                | ValueSome _ -> yield struct (s, t), "edge"
                | ValueNone when StateModel.isIgnored s t -> yield struct (s, t), "ignore"
                | ValueNone -> ()
    ]

/// Counts of classified (state, trigger) pairs over many runs.
type Coverage() =
    let counts = Dictionary<struct (TcpState * TcpTrigger), int>()

    member _.Add(pairs: seq<struct (TcpState * TcpTrigger)>) =
        for p in pairs do
            counts.[p] <-
                (match counts.TryGetValue p with
                 | true, n -> n
                 | _ -> 0)
                + 1

    member _.Count(p: struct (TcpState * TcpTrigger)) =
        match counts.TryGetValue p with
        | true, n -> n
        | _ -> 0

    member _.Pairs = counts.Keys |> Seq.toList
