/// The engine's entry points in the shape tests like: each `Connection.xxx` here is the core's
/// `Connection.xxxInto` with its actions returned as an F# list in a `TcpOutput` next to the new
/// control block, and `Connection.audit` checks the control block's invariants. The core keeps
/// only the `...Into` forms (a reusable sink, nothing allocated per packet); these allocate a
/// list per call, which is what tests and scripts want. Opened automatically: `Connection.send`
/// resolves here and `Connection.sendInto` in the core, as F# searches every module of a name.
[<AutoOpen>]
module NetStack.Tests.ConnectionHarness

open NetStack.Core.Tcp

/// The engine's answer to one input: what to do, in order, and when to call `handleTimer` next.
type TcpOutput =
    {
        /// Actions in order.
        Actions: TcpAction list
        /// The earliest timer deadline (absolute, µs), or ValueNone when no timer runs.
        NextDeadline: int64 voption
    }

/// The list-returning wrappers of the engine's entry points, and its invariants.
[<RequireQualifiedAccess>]
module Connection =

    /// One sink per thread: each wrapper copies the actions into its list before returning, so
    /// the sink is made once, not per call.
    let private scratch =
        new System.Threading.ThreadLocal<TcpActions>(fun () -> TcpActions())

    /// The calling thread's sink, emptied.
    let private sink () =
        let sink = scratch.Value
        sink.Clear()
        sink

    let private output (out: TcpActions) (c: Connection) : Connection * TcpOutput =
        c,
        {
            Actions = out.ToList()
            NextDeadline = NetStack.Core.Tcp.Connection.nextDeadline c
        }

    /// `Connection.handleSegmentInto` returning a `TcpOutput`.
    let handleSegment (now: int64) (seg: Segment) (c: Connection) : Connection * TcpOutput =
        let out = sink ()
        output out (NetStack.Core.Tcp.Connection.handleSegmentInto out now seg c)

    /// `Connection.handleTimerInto` returning a `TcpOutput`.
    let handleTimer (now: int64) (c: Connection) : Connection * TcpOutput =
        let out = sink ()
        output out (NetStack.Core.Tcp.Connection.handleTimerInto out now c)

    /// `Connection.handleIcmpInto` returning a `TcpOutput`.
    let handleIcmp (now: int64) (error: TcpIcmpError) (c: Connection) : Connection * TcpOutput =
        let out = sink ()
        output out (NetStack.Core.Tcp.Connection.handleIcmpInto out now error c)

    /// `Connection.openActiveInto` returning a `TcpOutput`.
    let openActive (config: TcpConfig) (iss: SeqNum) (now: int64) : Connection * TcpOutput =
        let out = sink ()
        output out (NetStack.Core.Tcp.Connection.openActiveInto out config iss now)

    /// `Connection.listenInto` returning a `TcpOutput`.
    let listen (config: TcpConfig) (iss: SeqNum) : Connection * TcpOutput =
        let out = sink ()
        output out (NetStack.Core.Tcp.Connection.listenInto out config iss)

    /// `Connection.acceptInto` returning a `TcpOutput`.
    let accept (config: TcpConfig) (iss: SeqNum) (now: int64) (seg: Segment) : Connection * TcpOutput =
        let out = sink ()
        output out (NetStack.Core.Tcp.Connection.acceptInto out config iss now seg)

    /// `Connection.sendInto` returning a `TcpOutput`.
    let send (now: int64) (bytes: int64) (c: Connection) : Connection * TcpOutput =
        let out = sink ()
        output out (NetStack.Core.Tcp.Connection.sendInto out now bytes c)

    /// `Connection.setNoDelayInto` returning a `TcpOutput`.
    let setNoDelay (now: int64) (noDelay: bool) (c: Connection) : Connection * TcpOutput =
        let out = sink ()
        output out (NetStack.Core.Tcp.Connection.setNoDelayInto out now noDelay c)

    /// `Connection.receiveWindowUpdateInto` returning a `TcpOutput`.
    let receiveWindowUpdate (now: int64) (bytes: int64) (c: Connection) : Connection * TcpOutput =
        let out = sink ()
        output out (NetStack.Core.Tcp.Connection.receiveWindowUpdateInto out now bytes c)

    /// `Connection.closeInto` returning a `TcpOutput`.
    let close (now: int64) (c: Connection) : Connection * TcpOutput =
        let out = sink ()
        output out (NetStack.Core.Tcp.Connection.closeInto out now c)

    /// `Connection.abortInto` returning a `TcpOutput`.
    let abort (now: int64) (c: Connection) : Connection * TcpOutput =
        let out = sink ()
        output out (NetStack.Core.Tcp.Connection.abortInto out now c)


    /// The first broken invariant of `c`, if any: sequence variables in order, stream counters
    /// consistent, out-of-order ranges inside the buffer, no timer once CLOSED.
    let audit (c: Connection) : string option =
        let synchronized =
            match c.State with
            | TcpState.Closed
            | TcpState.Listen
            | TcpState.SynSent -> false
            | _ -> true

        let outOfOrderOk =
            c.Rcv.OutOfOrder.Ranges
            |> List.forall (fun struct (s, e) ->
                s > c.Rcv.Delivered && e <= c.Rcv.Consumed + int64 c.Tuning.RcvBuf && s < e)

        if not (SeqNum.le c.Snd.Una c.Snd.Nxt) then
            Some $"SND.UNA {c.Snd.Una} is after SND.NXT {c.Snd.Nxt}"
        elif not (SeqNum.le c.Snd.Nxt c.Snd.Max) then
            Some $"SND.NXT {c.Snd.Nxt} is after SND.MAX {c.Snd.Max}"
        elif c.Snd.Acked < 0L || c.Snd.Acked > c.Snd.Written then
            Some $"Acked {c.Snd.Acked} outside 0..Written {c.Snd.Written}"
        elif c.Rcv.Consumed < 0L || c.Rcv.Consumed > c.Rcv.Delivered then
            Some $"Consumed {c.Rcv.Consumed} outside 0..Delivered {c.Rcv.Delivered}"
        elif
            c.Tuning.RcvBuf < c.Config.ReceiveBufferSize
            || c.Tuning.RcvBuf > c.Config.ReceiveBufferLimit
        then
            Some $"receive buffer {c.Tuning.RcvBuf} outside {c.Config.ReceiveBufferSize}..{c.Config.ReceiveBufferLimit}"
        elif c.Rcv.Delivered - c.Rcv.Consumed > int64 c.Tuning.RcvBuf then
            Some $"{c.Rcv.Delivered - c.Rcv.Consumed} unread bytes exceed the receive buffer"
        elif not outOfOrderOk then
            Some $"out-of-order ranges {c.Rcv.OutOfOrder.Ranges} outside ({c.Rcv.Delivered}, buffer end)"
        elif
            synchronized
            && c.Rcv.Nxt
               <> (c.Rcv.Irs + 1 + int c.Rcv.Delivered) + (if c.Rcv.FinReceived then 1 else 0)
        then
            Some $"RCV.NXT {c.Rcv.Nxt} does not match {c.Rcv.Delivered} delivered bytes"
        elif synchronized && SeqNum.lt c.Rcv.Right ((c.Rcv.Irs + 1 + int c.Rcv.Delivered)) then
            Some $"the offered right edge {c.Rcv.Right} is before RCV.NXT {c.Rcv.Nxt}"
        elif
            c.State = TcpState.Closed
            && (NetStack.Core.Tcp.Connection.nextDeadline c).IsSome
        then
            Some "a timer runs in CLOSED"
        elif
            c.Snd.WndShift < 0
            || c.Snd.WndShift > 14
            || c.Rcv.WndShift < 0
            || c.Rcv.WndShift > 14
        then
            Some $"window shifts {c.Snd.WndShift}/{c.Rcv.WndShift} outside 0..14"
        elif not c.WindowScaled && (c.Snd.WndShift <> 0 || c.Rcv.WndShift <> 0) then
            Some "window shifts set without window scaling"
        elif
            (c.WindowScaled && not c.Config.WindowScaling)
            || (c.Ts.Enabled && not c.Config.Timestamps)
        then
            Some "an option is in use that the configuration does not offer"
        elif synchronized && int64 (c.Rcv.Right - c.Rcv.Nxt) > (65535L <<< c.Rcv.WndShift) then
            Some $"the offered window {c.Rcv.Right - c.Rcv.Nxt} exceeds what the window field can say"
        elif
            synchronized
            && SeqNum.gt c.Rcv.Right ((c.Rcv.Irs + 1 + int (c.Rcv.Consumed + int64 c.Tuning.RcvBuf)))
        then
            Some $"the offered right edge {c.Rcv.Right} is beyond the receive buffer"
        elif c.Snd.Mss < 1 || c.Rcv.Mss < 1 then
            Some $"MSS {c.Snd.Mss}/{c.Rcv.Mss} below 1"
        elif c.SackEnabled && not c.Config.SelectiveAck then
            Some "SACK in use though the configuration does not offer it"
        elif
            c.Recovery.Scoreboard.Ranges
            |> List.exists (fun struct (s, e) -> s < c.Snd.Acked || e > c.Snd.Written || s >= e)
        then
            Some $"scoreboard {c.Recovery.Scoreboard.Ranges} outside [Acked {c.Snd.Acked}, Written {c.Snd.Written}]"
        elif not c.SackEnabled && not c.Recovery.Scoreboard.IsEmpty then
            Some "a scoreboard without SACK"
        elif c.Recovery.InRecovery && not (SeqNum.lt c.Snd.Una c.Recovery.RecoveryPoint) then
            Some $"in recovery though SND.UNA {c.Snd.Una} reached the recovery point {c.Recovery.RecoveryPoint}"
        elif c.Recovery.DupAcks < 0 || c.Recovery.Cwnd < 1 then
            Some $"DupAcks {c.Recovery.DupAcks} or cwnd {c.Recovery.Cwnd} out of range"
        else
            None
