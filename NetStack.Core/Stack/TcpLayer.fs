namespace NetStack.Core.Stack

open NetStack.Core.Tcp
open NetStack.Core.Wire

/// What the stack's socket layer adds around the pure TCP engine (`Connection`), kept pure so
/// it can be tested without a loop.
[<RequireQualifiedAccess>]
module TcpLayer =

    /// How long an orphaned connection (its user closed and let go of it) may wait in
    /// FIN-WAIT-2 for the peer's FIN: Linux's tcp_fin_timeout (60 s), plus a second so that it
    /// stays above the engine's largest RTO and a retransmitting peer always refreshes it.
    let OrphanFinWait2Timeout = 61_000_000L

    /// The connection after its user let go of it at `now`: nobody will read, so FIN-WAIT-2 must
    /// not last forever (RFC 9293 §3.10.4 leaves this to the implementation; the engine's
    /// `FinWait2Timeout` is meant for exactly this). A connection already in FIN-WAIT-2 gets
    /// the deadline at once; later ones get it on entering the state.
    let orphan (now: int64) (c: Connection) : Connection =
        let c =
            { c with
                Config =
                    { c.Config with
                        FinWait2Timeout = ValueSome OrphanFinWait2Timeout
                    }
            }

        if c.State = TcpState.FinWait2 && c.Timers.LingerAt.IsNone then
            { c with
                Timers.LingerAt = ValueSome(now + OrphanFinWait2Timeout)
            }
        else
            c

    /// The SYN,ACK that answers `syn` statelessly with the SYN cookie `cookie` as its ISN
    /// (RFC 4987 §3.6): our MSS is the only option, since a cookie cannot remember any other.
    let cookieSynAck (config: TcpConfig) (cookie: SeqNum) (syn: Segment) : OutgoingSegment =
        {
            Seq = cookie
            Ack = syn.Seq + 1
            Flags = TcpFlags.Syn ||| TcpFlags.Ack
            Window = uint16 (min config.ReceiveBufferSize 65535)
            Options =
                { TcpOptions.None with
                    MaximumSegmentSize = ValueSome(uint16 config.Mss)
                }
            DataPosition = 0L
            DataLength = 0
        }

    /// The SYN a valid cookie stands for, rebuilt from the peer's ACK (its sequence number is
    /// the peer's ISN + 1) and the MSS the cookie carried; handed to `Connection.accept` it
    /// yields the SYN-RECEIVED connection the listener did not keep.
    let cookieSyn (ack: Segment) (mss: int) : Segment =
        {
            Seq = ack.Seq - 1
            Ack = SeqNum 0u
            Flags = TcpFlags.Syn
            Window = ack.Window
            Options =
                { TcpOptions.None with
                    MaximumSegmentSize = ValueSome(uint16 mss)
                }
            PayloadLength = 0
        }
