using System.Buffers;

namespace NetStack.Engine;

/// <summary>
/// The TCP connections' send and receive rings of the stack's default sizes, kept for the next
/// connection. A short connection rents both (256 KiB each by default) and gives them back
/// within a millisecond, often on another thread: through <see cref="ArrayPool{T}.Shared"/>
/// (a slot per thread and a few per core) most of those arrays were new ones, over 130 KB
/// allocated per connection on the large-object heap, and a full garbage collection every few
/// thousand connections. Here a returned ring goes on a bounded stack that any thread takes
/// from. Arrays of other sizes (auto-tuning's growth, a socket's own buffer size) go to and from
/// <see cref="ArrayPool{T}.Shared"/> as before. What was not needed lately is let go:
/// <see cref="Trim"/>, called by the loop once a second, drops the rings that stayed unused
/// since the last call, so an idle stack holds none. Thread-safe.
/// </summary>
internal sealed class RingPool
{
    private readonly object _gate = new();
    private readonly int _size1;
    private readonly int _size2;
    private readonly Stack<byte[]> _free1 = new();
    private readonly Stack<byte[]> _free2 = new();
    private readonly int _capacity;
    // The fewest rings each stack held since the last Trim: that many were not needed.
    private int _lowWater1;
    private int _lowWater2;

    /// <summary>A pool for rings of two sizes (the same size twice is one pool), at most <paramref name="capacity"/> each.</summary>
    public RingPool(int size1, int size2, int capacity)
    {
        _size1 = size1;
        _size2 = size2 == size1 ? -1 : size2;
        _capacity = capacity;
    }

    /// <summary>The rings held now, for the tests.</summary>
    public int Held
    {
        get
        {
            lock (_gate)
                return _free1.Count + _free2.Count;
        }
    }

    /// <summary>An array of at least <paramref name="size"/> bytes (exactly that size for the pooled sizes).</summary>
    public byte[] Rent(int size)
    {
        if (size == _size1 || size == _size2)
        {
            lock (_gate)
            {
                var free = size == _size1 ? _free1 : _free2;
                if (free.TryPop(out var ring))
                {
                    if (size == _size1)
                        _lowWater1 = Math.Min(_lowWater1, free.Count);
                    else
                        _lowWater2 = Math.Min(_lowWater2, free.Count);
                    return ring;
                }
                if (size == _size1)
                    _lowWater1 = 0;
                else
                    _lowWater2 = 0;
            }
            return GC.AllocateUninitializedArray<byte>(size);
        }
        return ArrayPool<byte>.Shared.Rent(size);
    }

    /// <summary>Takes back an array <see cref="Rent"/> gave.</summary>
    public void Return(byte[] ring)
    {
        if (ring.Length == _size1 || ring.Length == _size2)
        {
            lock (_gate)
            {
                var free = ring.Length == _size1 ? _free1 : _free2;
                if (free.Count < _capacity)
                    free.Push(ring);
            }
            return;
        }
        ArrayPool<byte>.Shared.Return(ring);
    }

    /// <summary>Drops the rings no rent needed since the last call (the loop calls it once a second).</summary>
    public void Trim()
    {
        lock (_gate)
        {
            for (; _lowWater1 > 0 && _free1.Count > 0; _lowWater1--)
                _free1.Pop();
            for (; _lowWater2 > 0 && _free2.Count > 0; _lowWater2--)
                _free2.Pop();
            _lowWater1 = _free1.Count;
            _lowWater2 = _free2.Count;
        }
    }
}
