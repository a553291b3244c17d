using System.Collections.Concurrent;
using Microsoft.ML.Data;

namespace Microsoft.ML.BootMae.DataViews;

/// <summary>
/// The lazy output of a BootMAE transformer. Its cursor runs two input cursors over the same rows (the IDataView
/// contract guarantees identical order without a random generator): a lead cursor that reads only the image column
/// B rows ahead and scores them in one forward pass, and a follow cursor that serves the pass-through columns.
/// </summary>
/// <remarks>
/// Every cursor walks the rows in the same order in batches of B, so batch k is always rows [kB, kB + B). The scores of
/// each batch are kept (up to <see cref="KeptScoresBudgetBytes"/>) and shared: a later pass, or a parallel cursor that
/// reaches a batch another cursor is scoring, reuses them instead of running the encoder again. Multi-pass trainers
/// (SDCA reads its data twice per iteration, for up to thousands of iterations) then cost one featurization in all.
/// </remarks>
internal sealed class BatchScoredDataView : IDataView
{
    /// <summary>Default of <see cref="KeptScoresBudgetBytes"/>: 256 MiB, the mean-pooled embeddings of about 175,000 images at D 384 (ViT-S).</summary>
    internal const long DefaultKeptScoresBudgetBytes = 256L << 20;

    private readonly IDataView _input;
    private readonly IImageScorer _scorer;
    private readonly ImageColumnInfo _image;
    private readonly IReadOnlyList<ScoredColumn> _added;
    private readonly ConcurrentDictionary<long, TaskCompletionSource<float[]?>> _kept = new();
    private long _keptBytes;
    private int _scoringCursors;
    private int _budgetWarned;

    internal BatchScoredDataView(IDataView input, IImageScorer scorer)
    {
        _input = input;
        _scorer = scorer;
        _image = ImageColumn.Resolve(input.Schema, scorer.ImageColumnName, nameof(input));
        _added = scorer.GetOutputColumns(input.Schema);
        Schema = ImageScoring.BuildOutputSchema(input.Schema, _added);
    }

    /// <summary>Most bytes of scores this view keeps for repeated passes; batches beyond it are scored again on every pass.</summary>
    internal long KeptScoresBudgetBytes { get; init; } = DefaultKeptScoresBudgetBytes;

    /// <summary>Rows are served in the input's order only: a shuffling consumer (SDCA) wraps this view in its own pool.</summary>
    public bool CanShuffle => false;

    /// <inheritdoc />
    public DataViewSchema Schema { get; }

    /// <summary>The input's count: every input row gives one output row.</summary>
    public long? GetRowCount() => _input.GetRowCount();

    /// <inheritdoc />
    public DataViewRowCursor GetRowCursor(IEnumerable<DataViewSchema.Column> columnsNeeded, Random? rand = null) =>
        new Cursor(this, columnsNeeded);

    /// <summary>
    /// One cursor whatever <paramref name="n"/> is: batching already parallelises the encoder, and ML.NET consolidates
    /// or splits a set of one as it needs, so no row is scored twice.
    /// </summary>
    public DataViewRowCursor[] GetRowCursorSet(IEnumerable<DataViewSchema.Column> columnsNeeded, int n, Random? rand = null) =>
        new[] { GetRowCursor(columnsNeeded, rand) };

    /// <summary>Counts a cursor that reads an added column; from the second on, says once how to avoid repeated passes.</summary>
    private void OnScoringCursor()
    {
        if (Interlocked.Increment(ref _scoringCursors) == 2)
        {
            Log(warning: false,
                $"{_scorer.ComponentName}: the transformed data is being read again (a consumer that makes several passes, such as a trainer). " +
                $"Scores already computed are reused from memory, up to {FormatMiB(KeptScoresBudgetBytes)}; beyond that every pass runs the " +
                "encoder again. Before a trainer that makes many passes (SDCA, L-BFGS, FastTree, ...) append .AppendCacheCheckpoint(mlContext) " +
                "after this transform, or fit on mlContext.Data.Cache(data), so that every column is computed once.");
        }
    }

    /// <summary>The shared scores of batch <paramref name="batch"/>, claimed by the caller when it must score them.</summary>
    private TaskCompletionSource<float[]?> Claim(long batch, out bool claimed)
    {
        var mine = new TaskCompletionSource<float[]?>(TaskCreationOptions.RunContinuationsAsynchronously);
        var entry = _kept.GetOrAdd(batch, mine);
        claimed = ReferenceEquals(entry, mine);
        return entry;
    }

    /// <summary>Publishes the scores of a claimed batch (null when scoring failed, so waiting cursors score it themselves).</summary>
    private void Publish(long batch, TaskCompletionSource<float[]?> entry, float[]? scores, long firstRow)
    {
        if (scores is null || Interlocked.Add(ref _keptBytes, (long)scores.Length * sizeof(float)) > KeptScoresBudgetBytes)
        {
            _kept.TryRemove(new KeyValuePair<long, TaskCompletionSource<float[]?>>(batch, entry));
            if (scores is not null)
            {
                Interlocked.Add(ref _keptBytes, -(long)scores.Length * sizeof(float));
                if (Interlocked.Exchange(ref _budgetWarned, 1) == 0)
                {
                    Log(warning: true,
                        $"{_scorer.ComponentName}: the scores exceed the {FormatMiB(KeptScoresBudgetBytes)} kept for repeated passes, so rows from " +
                        $"about {firstRow} on run the encoder again on every pass. Append .AppendCacheCheckpoint(mlContext) after this transform " +
                        "(or use mlContext.Data.Cache(data)) before a trainer that makes many passes.");
                }
            }
        }

        entry.SetResult(scores);
    }

    private static string FormatMiB(long bytes) => bytes >= 1L << 20 ? $"{bytes >> 20} MiB" : $"{bytes} bytes";

    private void Log(bool warning, string message)
    {
        if (_scorer.LogEnvironment is not { } env)
        {
            return;
        }

        using var log = new BootMaeLogger(env, _scorer.ComponentName);
        if (warning)
        {
            log.Warning(message);
        }
        else
        {
            log.Info(message);
        }
    }

    private sealed class Cursor : DataViewRowCursor
    {
        private readonly BatchScoredDataView _parent;
        private readonly DataViewRowCursor _follow;
        private readonly bool[] _active;
        private readonly Delegate?[] _getters;
        private readonly RawImage[] _staged;
        private readonly int _inputCount;
        private readonly bool _scoring;
        private DataViewRowCursor? _lead;
        private ImageRowReader? _reader;
        private float[] _scores = Array.Empty<float>();
        private int _filled;
        private int _row = -1;
        private long _nextBatch;
        private long _leadRows;
        private bool _disposed;

        internal Cursor(BatchScoredDataView parent, IEnumerable<DataViewSchema.Column> columnsNeeded)
        {
            _parent = parent;
            var input = parent._input;
            _inputCount = input.Schema.Count;
            _active = new bool[parent.Schema.Count];
            foreach (var column in columnsNeeded)
            {
                _active[column.Index] = true;
            }

            var passThrough = new List<DataViewSchema.Column>();
            for (int i = 0; i < _inputCount; i++)
            {
                if (_active[i])
                {
                    passThrough.Add(input.Schema[i]);
                }
            }

            _follow = ImageRowReader.OpenSequential(input, passThrough);
            _getters = new Delegate?[parent._added.Count];
            _staged = Array.Empty<RawImage>();
            for (int j = 0; j < parent._added.Count; j++)
            {
                if (_active[_inputCount + j])
                {
                    _scoring = true;
                    _getters[j] = ImageScoring.MakeGetter(parent._added[j], parent._scorer.OutputSize, () => (_scores, _row));
                }
            }

            if (_scoring)
            {
                int batch = Math.Max(1, parent._scorer.BatchSize);
                _staged = new RawImage[batch];
                for (int i = 0; i < batch; i++)
                {
                    _staged[i] = new RawImage();
                }

                parent.OnScoringCursor();
            }
        }

        public override DataViewSchema Schema => _parent.Schema;

        public override long Position => _follow.Position;

        public override long Batch => _follow.Batch;

        public override ValueGetter<DataViewRowId> GetIdGetter() => _follow.GetIdGetter();

        public override bool IsColumnActive(DataViewSchema.Column column) => _active[column.Index];

        public override ValueGetter<TValue> GetGetter<TValue>(DataViewSchema.Column column)
        {
            if (!_active[column.Index])
            {
                throw new InvalidOperationException($"Column '{column.Name}' was not requested when the cursor was created.");
            }

            if (column.Index < _inputCount)
            {
                return _follow.GetGetter<TValue>(_parent._input.Schema[column.Index]);
            }

            return ImageScoring.Cast<TValue>(_getters[column.Index - _inputCount]!, column);
        }

        public override bool MoveNext()
        {
            if (_disposed || !_follow.MoveNext())
            {
                return false;
            }

            if (!_scoring)
            {
                return true;
            }

            _row++;
            if (_row >= _filled)
            {
                FillBatch();
            }

            return true;
        }

        private void FillBatch()
        {
            long batch = _nextBatch++;
            long first = batch * _staged.Length;
            while (true)
            {
                var entry = _parent.Claim(batch, out bool claimed);
                if (!claimed)
                {
                    // An earlier pass or a parallel cursor scored (or is scoring) this batch; null means it failed
                    // there, so score it here and report this cursor's own error.
                    if (entry.Task.GetAwaiter().GetResult() is { } kept)
                    {
                        Serve(kept);
                        return;
                    }

                    continue;
                }

                float[]? scores = null;
                try
                {
                    scores = Score(first);
                }
                finally
                {
                    _parent.Publish(batch, entry, scores, first);
                }

                Serve(scores);
                return;
            }
        }

        private float[] Score(long first)
        {
            if (_lead is null)
            {
                var input = _parent._input;
                var imageColumn = input.Schema[_parent._image.Index];
                var source = ImageRowReader.FindSourceColumn(input.Schema, _parent._image.Name);
                _lead = ImageRowReader.OpenSequential(input, source is { } s ? new[] { imageColumn, s } : new[] { imageColumn });
                _reader = new ImageRowReader(_lead, _parent._image, source);
            }

            // Move past the rows whose scores were reused; their images are never read.
            while (_leadRows < first && _lead.MoveNext())
            {
                _leadRows++;
            }

            int n = 0;
            while (_leadRows == first && n < _staged.Length && _lead.MoveNext())
            {
                _reader!.Read(_staged[n]);
                n++;
            }

            _leadRows += n;
            if (n == 0)
            {
                throw new InvalidOperationException("The input data view returned fewer rows to the image cursor than to the pass-through cursor.");
            }

            var pixels = ImageScoring.DecodeBatch(_staged, n, _parent._image, _parent._scorer);
            return _parent._scorer.Score(pixels, n);
        }

        private void Serve(float[] scores)
        {
            _scores = scores;
            _filled = scores.Length / _parent._scorer.OutputSize;
            _row = 0;
        }

        protected override void Dispose(bool disposing)
        {
            if (_disposed)
            {
                return;
            }

            if (disposing)
            {
                _reader?.Dispose();
                _lead?.Dispose();
                _follow.Dispose();
            }

            _disposed = true;
            base.Dispose(disposing);
        }
    }
}
