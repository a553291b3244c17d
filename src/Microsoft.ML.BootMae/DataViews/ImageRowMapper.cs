using Microsoft.ML.Data;

namespace Microsoft.ML.BootMae.DataViews;

/// <summary>
/// Row-at-a-time mapping for <c>PredictionEngine</c>: each output row scores its image (a batch of one) when an added
/// column is first read for a position, and caches the result for that position. Rows are independent, so several
/// prediction engines on one model can run on different threads.
/// </summary>
internal sealed class ImageRowMapper : IRowToRowMapper
{
    private readonly IImageScorer _scorer;
    private readonly ImageColumnInfo _image;
    private readonly IReadOnlyList<ScoredColumn> _added;

    internal ImageRowMapper(DataViewSchema inputSchema, IImageScorer scorer)
    {
        _scorer = scorer;
        InputSchema = inputSchema;
        _image = ImageColumn.Resolve(inputSchema, scorer.ImageColumnName);
        _added = scorer.GetOutputColumns(inputSchema);
        OutputSchema = ImageScoring.BuildOutputSchema(inputSchema, _added);
    }

    /// <inheritdoc />
    public DataViewSchema InputSchema { get; }

    /// <inheritdoc />
    public DataViewSchema OutputSchema { get; }

    /// <inheritdoc />
    public IEnumerable<DataViewSchema.Column> GetDependencies(IEnumerable<DataViewSchema.Column> dependingColumns)
    {
        var needed = new SortedSet<int>();
        foreach (var column in dependingColumns)
        {
            needed.Add(column.Index < InputSchema.Count ? column.Index : _image.Index);
        }

        return needed.Select(i => InputSchema[i]).ToArray();
    }

    /// <inheritdoc />
    public DataViewRow GetRow(DataViewRow input, IEnumerable<DataViewSchema.Column> activeColumns) =>
        new MappedRow(this, input, activeColumns);

    private sealed class MappedRow : DataViewRow
    {
        private readonly ImageRowMapper _parent;
        private readonly DataViewRow _input;
        private readonly bool[] _active;
        private readonly Delegate?[] _getters;
        private readonly ImageRowReader? _reader;
        private readonly RawImage[] _staged = { new() };
        private float[] _scores = Array.Empty<float>();
        private long _scoredPosition = -1;

        internal MappedRow(ImageRowMapper parent, DataViewRow input, IEnumerable<DataViewSchema.Column> activeColumns)
        {
            _parent = parent;
            _input = input;
            _active = new bool[parent.OutputSchema.Count];
            foreach (var column in activeColumns)
            {
                _active[column.Index] = true;
            }

            int inputCount = parent.InputSchema.Count;
            _getters = new Delegate?[parent._added.Count];
            for (int j = 0; j < parent._added.Count; j++)
            {
                if (_active[inputCount + j])
                {
                    _getters[j] = ImageScoring.MakeGetter(parent._added[j], parent._scorer.OutputSize, Current);
                    _reader ??= new ImageRowReader(input, parent._image);
                }
            }
        }

        public override DataViewSchema Schema => _parent.OutputSchema;

        public override long Position => _input.Position;

        public override long Batch => _input.Batch;

        public override ValueGetter<DataViewRowId> GetIdGetter() => _input.GetIdGetter();

        public override bool IsColumnActive(DataViewSchema.Column column) => _active[column.Index];

        public override ValueGetter<TValue> GetGetter<TValue>(DataViewSchema.Column column)
        {
            if (!_active[column.Index])
            {
                throw new InvalidOperationException($"Column '{column.Name}' is not active in this row.");
            }

            int inputCount = _parent.InputSchema.Count;
            return column.Index < inputCount
                ? _input.GetGetter<TValue>(_parent.InputSchema[column.Index])
                : ImageScoring.Cast<TValue>(_getters[column.Index - inputCount]!, column);
        }

        private (float[] Buffer, int Row) Current()
        {
            // PredictionEngine reuses one row object and moves the position forward for each prediction.
            if (_scoredPosition != _input.Position || _scores.Length == 0)
            {
                _reader!.Read(_staged[0]);
                var pixels = ImageScoring.DecodeBatch(_staged, 1, _parent._image, _parent._scorer);
                _scores = _parent._scorer.Score(pixels, 1);
                _scoredPosition = _input.Position;
            }

            return (_scores, 0);
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                _reader?.Dispose();
            }

            base.Dispose(disposing);
        }
    }
}
