namespace NetStack.Core.Stack



/// Path MTU per destination, learned from ICMPv4 "fragmentation needed" (RFC 1191) and ICMPv6
/// "packet too big" (RFC 8201). An immutable value; `now` is monotonic microseconds.
type PathMtuCache =
    {
        /// The MTU of our own link: the path MTU of every destination nothing was learned about.
        LinkMtu: int
        /// How long a learned value holds before the link MTU is tried again (RFC 1191 §6.3 and
        /// RFC 8201 §5.4 suggest 10 minutes).
        Lifetime: int64
        /// Learned path MTUs with the time they expire.
        Entries: Map<IpAddr, struct (int * int64)>
    }

/// Operations on a `PathMtuCache`.
[<RequireQualifiedAccess>]
module PathMtu =

    /// RFC 791 §3.2: every IPv4 host handles 68-byte datagrams, so no report may push us below.
    [<Literal>]
    let MinimumIpv4 = 68

    /// RFC 8200 §5: every IPv6 link carries 1280 bytes; RFC 8201 §4 ignores smaller reports.
    [<Literal>]
    let MinimumIpv6 = 1280

    /// RFC 1191 §5: an old router reports 0; guess the next "plateau" below the size that failed.
    /// These are the plateaus of RFC 1191 §7 table 7-1 down to the IPv4 minimum.
    let private plateaus =
        [| 32000; 17914; 8166; 4352; 2002; 1492; 1006; 508; 296; MinimumIpv4 |]

    /// Ten minutes, in microseconds.
    [<Literal>]
    let DefaultLifetime = 600_000_000L

    /// An empty cache for a link of `linkMtu` bytes.
    let create (linkMtu: int) : PathMtuCache =
        {
            LinkMtu = linkMtu
            Lifetime = DefaultLifetime
            Entries = Map.empty
        }

    /// The path MTU towards `destination` at `now`: the learned value while it holds, else the link MTU.
    let lookup (now: int64) (destination: IpAddr) (cache: PathMtuCache) : int =
        match cache.Entries.TryFind destination with
        | Some(struct (mtu, expires)) when expires > now -> mtu
        | _ -> cache.LinkMtu

    /// The MTU to believe from a report of `reported` bytes after a packet of `sentLength` bytes
    /// failed: clamped to the family's minimum, never above the link MTU, and for IPv4 a zero
    /// report (pre-RFC 1191 router) replaced by the plateau below `sentLength`.
    let effective (isIpv6: bool) (reported: int64) (sentLength: int) (linkMtu: int) : int =
        let floor = if isIpv6 then MinimumIpv6 else MinimumIpv4

        let guess =
            if not isIpv6 && reported = 0L then
                let mutable i = 0

                while i < plateaus.Length - 1 && plateaus.[i] >= sentLength do
                    i <- i + 1

                int64 plateaus.[i]
            else
                reported

        int (max (int64 floor) (min guess (int64 linkMtu)))

    /// Forgets entries expired at `now` (bounded memory).
    let prune (now: int64) (cache: PathMtuCache) : PathMtuCache =
        if cache.Entries.IsEmpty then
            cache
        else
            { cache with
                Entries = cache.Entries |> Map.filter (fun _ (struct (_, expires)) -> expires > now)
            }

    /// The most destinations remembered at once.
    [<Literal>]
    let MaxEntries = 1024

    /// Records a report at `now`: a "too big" for a packet of `sentLength` bytes to `destination`,
    /// whose router said `reported`. Only ever lowers the current value (RFC 1191 §6.3: a larger
    /// report is a stale or forged one; increases come from expiry).
    let report (now: int64) (destination: IpAddr) (reported: int64) (sentLength: int) (cache: PathMtuCache) =
        let current = lookup now destination cache
        let mtu = effective destination.IsIpv6 reported sentLength cache.LinkMtu

        if mtu >= current then
            cache
        elif cache.Entries.Count >= MaxEntries && not (cache.Entries.ContainsKey destination) then
            // Forged reports for many destinations must not grow the map without bound.
            let pruned = prune now cache

            if pruned.Entries.Count >= MaxEntries then
                pruned
            else
                { pruned with
                    Entries = pruned.Entries.Add(destination, struct (mtu, now + cache.Lifetime))
                }
        else
            { cache with
                Entries = cache.Entries.Add(destination, struct (mtu, now + cache.Lifetime))
            }
