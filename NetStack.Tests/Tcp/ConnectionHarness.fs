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
            c.OutOfOrder.Ranges
            |> List.forall (fun struct (s, e) -> s > c.Delivered && e <= c.Consumed + int64 c.RcvBuf && s < e)

        if not (SeqNum.le c.SndUna c.SndNxt) then
            Some $"SND.UNA {c.SndUna} is after SND.NXT {c.SndNxt}"
        elif not (SeqNum.le c.SndNxt c.SndMax) then
            Some $"SND.NXT {c.SndNxt} is after SND.MAX {c.SndMax}"
        elif c.Acked < 0L || c.Acked > c.Written then
            Some $"Acked {c.Acked} outside 0..Written {c.Written}"
        elif c.Consumed < 0L || c.Consumed > c.Delivered then
            Some $"Consumed {c.Consumed} outside 0..Delivered {c.Delivered}"
        elif c.RcvBuf < c.Config.ReceiveBufferSize || c.RcvBuf > c.Config.ReceiveBufferLimit then
            Some $"receive buffer {c.RcvBuf} outside {c.Config.ReceiveBufferSize}..{c.Config.ReceiveBufferLimit}"
        elif c.Delivered - c.Consumed > int64 c.RcvBuf then
            Some $"{c.Delivered - c.Consumed} unread bytes exceed the receive buffer"
        elif not outOfOrderOk then
            Some $"out-of-order ranges {c.OutOfOrder.Ranges} outside ({c.Delivered}, buffer end)"
        elif
            synchronized
            && c.RcvNxt <> (c.Irs + 1 + int c.Delivered) + (if c.FinReceived then 1 else 0)
        then
            Some $"RCV.NXT {c.RcvNxt} does not match {c.Delivered} delivered bytes"
        elif synchronized && SeqNum.lt c.RcvRight ((c.Irs + 1 + int c.Delivered)) then
            Some $"the offered right edge {c.RcvRight} is before RCV.NXT {c.RcvNxt}"
        elif
            c.State = TcpState.Closed
            && (NetStack.Core.Tcp.Connection.nextDeadline c).IsSome
        then
            Some "a timer runs in CLOSED"
        elif
            c.SndWndShift < 0
            || c.SndWndShift > 14
            || c.RcvWndShift < 0
            || c.RcvWndShift > 14
        then
            Some $"window shifts {c.SndWndShift}/{c.RcvWndShift} outside 0..14"
        elif not c.WindowScaled && (c.SndWndShift <> 0 || c.RcvWndShift <> 0) then
            Some "window shifts set without window scaling"
        elif
            (c.WindowScaled && not c.Config.WindowScaling)
            || (c.TsEnabled && not c.Config.Timestamps)
        then
            Some "an option is in use that the configuration does not offer"
        elif synchronized && int64 (c.RcvRight - c.RcvNxt) > (65535L <<< c.RcvWndShift) then
            Some $"the offered window {c.RcvRight - c.RcvNxt} exceeds what the window field can say"
        elif
            synchronized
            && SeqNum.gt c.RcvRight ((c.Irs + 1 + int (c.Consumed + int64 c.RcvBuf)))
        then
            Some $"the offered right edge {c.RcvRight} is beyond the receive buffer"
        elif c.SendMss < 1 || c.RcvMss < 1 then
            Some $"MSS {c.SendMss}/{c.RcvMss} below 1"
        elif c.SackEnabled && not c.Config.SelectiveAck then
            Some "SACK in use though the configuration does not offer it"
        elif
            c.Scoreboard.Ranges
            |> List.exists (fun struct (s, e) -> s < c.Acked || e > c.Written || s >= e)
        then
            Some $"scoreboard {c.Scoreboard.Ranges} outside [Acked {c.Acked}, Written {c.Written}]"
        elif not c.SackEnabled && not c.Scoreboard.IsEmpty then
            Some "a scoreboard without SACK"
        elif c.InRecovery && not (SeqNum.lt c.SndUna c.RecoveryPoint) then
            Some $"in recovery though SND.UNA {c.SndUna} reached the recovery point {c.RecoveryPoint}"
        elif c.DupAcks < 0 || c.Cwnd < 1 then
            Some $"DupAcks {c.DupAcks} or cwnd {c.Cwnd} out of range"
        else
            None
