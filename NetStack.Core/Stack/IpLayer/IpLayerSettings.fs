namespace NetStack.Core.Stack

open System
open NetStack.Core.Ip
open NetStack.Core.Wire

/// The IP layer's settings, built by name (a C# object initializer); `ToConfig` makes the
/// `IpLayerConfig` the layer starts from.
[<Sealed; AllowNullLiteral>]
type IpLayerSettings() =
    /// Our IPv4 address, if any.
    member val Address4 = Nullable<Ipv4Address>() with get, set
    /// Our IPv6 address, if any.
    member val Address6 = Nullable<Ipv6Address>() with get, set
    /// The link MTU (68..65535; at least 1280 with an IPv6 address).
    member val Mtu = 1500 with get, set
    /// ICMP errors sent per second at most (RFC 1812 §4.3.2.8, RFC 4443 §2.4(f)).
    member val IcmpErrorsPerSecond = 100 with get, set
    /// Bytes of fragments held for reassembly at most.
    member val ReassemblyMaxBytes = ReassemblyConfig.Default.MaxBytes with get, set
    /// Datagrams in reassembly at most.
    member val ReassemblyMaxDatagrams = ReassemblyConfig.Default.MaxDatagrams with get, set
    /// Accept unicast packets to any address (`IpLayerConfig.AnyDestination`).
    member val AnyDestination = false with get, set
    /// The prefix length of Address4 (0..32), if known: its subnet broadcast is received as a
    /// broadcast.
    member val PrefixLength4 = Nullable<int>() with get, set

    /// The configuration: the burst of ICMP errors is the rate, between 1 and 10 (a second's
    /// worth, capped so a burst stays small); reassembly timeouts and the per-datagram fragment
    /// bound are the layer's defaults (`ReassemblyConfig.Default`: 30 s for IPv4, RFC 8200 §4.5's
    /// 60 s for IPv6).
    member this.ToConfig() : IpLayerConfig =
        let voptionOf (n: Nullable<'T>) =
            if n.HasValue then ValueSome n.Value else ValueNone

        { IpLayer.config (voptionOf this.Address4) (voptionOf this.Address6) this.Mtu with
            IcmpErrorsPerSecond = this.IcmpErrorsPerSecond
            IcmpErrorBurst = max 1 (min this.IcmpErrorsPerSecond 10)
            AnyDestination = this.AnyDestination
            Mask4 =
                if this.PrefixLength4.HasValue then
                    let p = this.PrefixLength4.Value

                    if p <= 0 then 0u
                    elif p >= 32 then UInt32.MaxValue
                    else UInt32.MaxValue <<< (32 - p)
                else
                    0u
            Reassembly =
                { ReassemblyConfig.Default with
                    MaxBytes = this.ReassemblyMaxBytes
                    MaxDatagrams = this.ReassemblyMaxDatagrams
                }
        }
