using Microsoft.ML.Data;

namespace Microsoft.ML.BootMae.DataViews;

/// <summary>
/// The lazy output of a BootMAE transformer. Its cursor runs two input cursors over the same rows (the IDataView
/// contract guarantees identical order without a random generator): a lead cursor that reads only the image column
/// B rows ahead and scores them in one forward pass, and a follow cursor that serves the pass-through columns.
/// </summary>
internal sealed class BatchScoredDataView : IDataView
{
    private readonly IDataView _input;
    private readonly IImageScorer _scorer;
    private readonly ImageColumnInfo _image;
    private readonly IReadOnlyList<ScoredColumn> _added;

    internal BatchScoredDataView(IDataView input, IImageScorer scorer)
    {
        _input = input;
        _scorer = scorer;
        _image = ImageColumn.Resolve(input.Schema, scorer.ImageColumnName, nameof(input));
        _added = scorer.GetOutputColumns(input.Schema);
        Schema = ImageScoring.BuildOutputSchema(input.Schema, _added);
    }

    /// <inheritdoc />
    public bool CanShuffle => false;

    /// <inheritdoc />
    public DataViewSchema Schema { get; }

    /// <inheritdoc />
    public long? GetRowCount() => _input.GetRowCount();

    /// <inheritdoc />
    public DataViewRowCursor GetRowCursor(IEnumerable<DataViewSchema.Column> columnsNeeded, Random? rand = null) =>
        new Cursor(this, columnsNeeded);

    /// <inheritdoc />
    public DataViewRowCursor[] GetRowCursorSet(IEnumerable<DataViewSchema.Column> columnsNeeded, int n, Random? rand = null) =>
        new[] { GetRowCursor(columnsNeeded, rand) };

    private sealed class Cursor : DataViewRowCursor
    {
        private readonly BatchScoredDataView _parent;
        private readonly DataViewRowCursor _follow;
        private readonly DataViewRowCursor? _lead;
        private readonly ImageRowReader? _reader;
        private readonly bool[] _active;
        private readonly Delegate?[] _getters;
        private readonly RawImage[] _staged;
        private readonly int _inputCount;
        private float[] _scores = Array.Empty<float>();
        private int _filled;
        private int _row = -1;
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
            bool anyAdded = false;
            for (int j = 0; j < parent._added.Count; j++)
            {
                if (_active[_inputCount + j])
                {
                    anyAdded = true;
                    _getters[j] = ImageScoring.MakeGetter(parent._added[j], parent._scorer.OutputSize, () => (_scores, _row));
                }
            }

            if (anyAdded)
            {
                var imageColumn = input.Schema[parent._image.Index];
                var source = ImageRowReader.FindSourceColumn(input.Schema, parent._image.Name);
                _lead = ImageRowReader.OpenSequential(input, source is { } s ? new[] { imageColumn, s } : new[] { imageColumn });
                _reader = new ImageRowReader(_lead, parent._image, source);
                int batch = Math.Max(1, parent._scorer.BatchSize);
                _staged = new RawImage[batch];
                for (int i = 0; i < batch; i++)
                {
                    _staged[i] = new RawImage();
                }
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

            if (_lead is null)
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
            int n = 0;
            while (n < _staged.Length && _lead!.MoveNext())
            {
                _reader!.Read(_staged[n]);
                n++;
            }

            if (n == 0)
            {
                throw new InvalidOperationException("The input data view returned fewer rows to the image cursor than to the pass-through cursor.");
            }

            var pixels = ImageScoring.DecodeBatch(_staged, n, _parent._image, _parent._scorer);
            _scores = _parent._scorer.Score(pixels, n);
            _filled = n;
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
