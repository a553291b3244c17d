using Microsoft.ML.Runtime;

namespace Microsoft.ML.BootMae;

/// <summary>
/// The token a trainer's engine runs under: cancelled by the Options' <see cref="CancellationToken"/> or by
/// <c>MLContext.CancelExecution()</c>. ML.NET only raises a flag for the latter (no token, no callback), so the flag
/// is polled each time the engine takes a batch (<see cref="Watch"/>), which the engines do right before each step:
/// a cancellation during step <c>n</c> stops the run before step <c>n + 1</c> starts.
/// </summary>
internal sealed class TrainingCancellation : IDisposable
{
    private readonly CancellationTokenSource _source;
    private readonly Func<bool>? _contextCanceled;
    private readonly string _component;
    private volatile bool _byContext;

    internal TrainingCancellation(IHostEnvironment? env, CancellationToken optionsToken, string component)
    {
        _source = CancellationTokenSource.CreateLinkedTokenSource(optionsToken);
        _contextCanceled = BootMaeHost.TryGetCancellationProbe(env);
        _component = component;
    }

    /// <summary>The token to hand to the engine.</summary>
    internal CancellationToken Token => _source.Token;

    /// <summary>True once <c>MLContext.CancelExecution()</c> has been seen.</summary>
    internal bool ByContext => _byContext;

    /// <summary>Cancels <see cref="Token"/> when the MLContext has been cancelled.</summary>
    internal void Poll()
    {
        if (!_byContext && _contextCanceled is { } probe && probe())
        {
            _byContext = true;
            _source.Cancel();
        }
    }

    /// <summary>
    /// Throws at once when the MLContext was cancelled before training started (ML.NET's flag never resets, so a
    /// cancelled MLContext refuses every later Fit, as its own trainers do).
    /// </summary>
    internal void ThrowIfCanceledBeforeStart()
    {
        Poll();
        if (_byContext)
        {
            throw new OperationCanceledException(
                $"{_component}: the MLContext was cancelled (MLContext.CancelExecution()) before training started; no step was run. Create a new MLContext to train again.",
                _source.Token);
        }
    }

    /// <summary>The exception to throw for a cancellation the MLContext caused: says who cancelled, after how many steps, and where the checkpoint is.</summary>
    internal OperationCanceledException Explain(OperationCanceledException inner, string? checkpointDirectory) =>
        new($"{_component} was cancelled by MLContext.CancelExecution() (it stops before the next optimizer step). " +
            (checkpointDirectory is null
                ? "No checkpoint was kept: set CheckpointDirectory to keep one."
                : $"Checkpoints are kept in '{checkpointDirectory}', the last one at the step reached (when this run took a step); set ResumeFromCheckpoint = true to continue from it."),
            inner, _source.Token);

    /// <summary>Wraps <paramref name="source"/> so that taking a batch first polls the MLContext.</summary>
    internal IImageBatchSource Watch(IImageBatchSource source) => new PollingSource(source, this);

    public void Dispose() => _source.Dispose();

    private sealed class PollingSource : IImageBatchSource
    {
        private readonly IImageBatchSource _inner;
        private readonly TrainingCancellation _owner;

        internal PollingSource(IImageBatchSource inner, TrainingCancellation owner)
        {
            _inner = inner;
            _owner = owner;
        }

        public long? Count => _inner.Count;

        public IEnumerable<ImageBatch> ReadEpoch(int epoch, int batchSize, CancellationToken cancellationToken)
        {
            _owner.Poll();
            foreach (var batch in _inner.ReadEpoch(epoch, batchSize, cancellationToken))
            {
                // The engine checks its token right after taking the batch, before it runs the step.
                _owner.Poll();
                yield return batch;
            }
        }
    }
}
