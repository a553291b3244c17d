namespace Microsoft.ML.BootMae;

/// <summary>
/// Lets <c>Dispose</c> of an object that owns native tensors wait for the calls already inside it, and makes later
/// calls throw <see cref="ObjectDisposedException"/>, so a Dispose racing a Transform on another thread never frees
/// memory libtorch is still reading (a native crash).
/// </summary>
internal sealed class DisposeGate
{
    private readonly object _lock = new();
    private int _inside;
    private bool _closed;

    /// <summary>True once <see cref="Close"/> has begun.</summary>
    internal bool IsClosed
    {
        get
        {
            lock (_lock)
            {
                return _closed;
            }
        }
    }

    /// <summary>Enters a call; dispose the result when the call ends.</summary>
    /// <exception cref="ObjectDisposedException">The owner is disposed or being disposed.</exception>
    internal Use Enter(object owner)
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_closed, owner);
            _inside++;
        }

        return new Use(this);
    }

    /// <summary>Closes the gate and waits until no call is inside; false when it was already closed.</summary>
    internal bool Close()
    {
        lock (_lock)
        {
            if (_closed)
            {
                return false;
            }

            _closed = true;
            while (_inside > 0)
            {
                Monitor.Wait(_lock);
            }

            return true;
        }
    }

    private void Exit()
    {
        lock (_lock)
        {
            if (--_inside == 0)
            {
                Monitor.PulseAll(_lock);
            }
        }
    }

    /// <summary>One call inside the gate.</summary>
    internal readonly struct Use : IDisposable
    {
        private readonly DisposeGate _gate;

        internal Use(DisposeGate gate) => _gate = gate;

        /// <summary>Leaves the gate.</summary>
        public void Dispose() => _gate.Exit();
    }
}
