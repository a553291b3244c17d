using System.Runtime.ExceptionServices;
using System.Threading.Channels;
using Microsoft.ML.BootMae.Training;
using Microsoft.ML.Data;

namespace Microsoft.ML.BootMae.DataViews;

/// <summary>
/// The engine's <see cref="IImageBatchSource"/> over an ML.NET <see cref="IDataView"/>. A producer thread owns the
/// cursor, copies B rows out, decodes and augments them with <see cref="Parallel.For(int, int, Action{int})"/> and
/// hands finished batches over a bounded channel of two, so decoding overlaps the engine's step. The engine creates
/// tensors on its own thread.
/// </summary>
internal sealed class DataViewImageBatchSource : IImageBatchSource
{
    private const int ChannelCapacity = 2;
    private readonly IDataView _data;
    private readonly ImageColumnInfo _image;
    private readonly DataViewSchema.Column? _label;
    private readonly DataViewSchema.Column? _source;
    private readonly BootMaeArchitecture _architecture;
    private readonly ImageAugmentation? _augmentation;
    private readonly int _seed;
    private readonly bool _shuffle;
    private readonly int _shufflePoolRows;
    private readonly bool _skipBadImages;
    private readonly long _maxImagePixels;
    private readonly BootMaeLogger? _log;
    private readonly string _name;
    private long _badImages;
    private long _missingLabels;
    private int _warnedNoShuffle;

    /// <param name="data">Rows to read.</param>
    /// <param name="image">The resolved image column of <paramref name="data"/>.</param>
    /// <param name="labelColumnName">A <c>Key&lt;UInt32&gt;</c> label column, or null for unlabeled data.</param>
    /// <param name="architecture">Target size and channel count.</param>
    /// <param name="augmentation">Random crop and flip, or null.</param>
    /// <param name="seed">Seeds shuffling and augmentation (combined with the epoch).</param>
    /// <param name="shuffle">Reshuffle rows every epoch.</param>
    /// <param name="skipBadImages">Skip and count undecodable images instead of failing.</param>
    /// <param name="rowCount">Rows in <paramref name="data"/>, when already counted.</param>
    /// <param name="log">Where epoch summaries go.</param>
    /// <param name="name">"training" or "validation", for messages.</param>
    /// <param name="shufflePoolRows">Rows held by ML.NET's shuffle when the data cannot shuffle itself.</param>
    /// <param name="maxImagePixels">Largest width·height of an image (<c>MaxImagePixels</c>), checked on the file's header.</param>
    internal DataViewImageBatchSource(IDataView data, ImageColumnInfo image, string? labelColumnName, BootMaeArchitecture architecture,
        ImageAugmentation? augmentation, int seed, bool shuffle, bool skipBadImages, long? rowCount, BootMaeLogger? log,
        string name = "training", int shufflePoolRows = 1000, long maxImagePixels = ImageDecoder.DefaultMaxImagePixels)
    {
        _maxImagePixels = maxImagePixels;
        _data = data;
        _image = image;
        _label = labelColumnName is null ? null : data.Schema[labelColumnName];
        _source = ImageRowReader.FindSourceColumn(data.Schema, image.Name);
        _architecture = architecture;
        _augmentation = augmentation;
        _seed = seed;
        _shuffle = shuffle;
        _skipBadImages = skipBadImages;
        _log = log;
        _name = name;
        _shufflePoolRows = shufflePoolRows;
        Count = rowCount ?? data.GetRowCount();
    }

    /// <inheritdoc />
    public long? Count { get; }

    /// <summary>Undecodable images skipped in the last epoch read (with <c>SkipBadImages</c>).</summary>
    public long BadImagesSkipped => Interlocked.Read(ref _badImages);

    /// <summary>Rows skipped in the last epoch read because their label was missing (key 0).</summary>
    public long MissingLabelsSkipped => Interlocked.Read(ref _missingLabels);

    /// <summary>Counts rows without reading any column (so no image is loaded).</summary>
    internal static long CountRows(IDataView data)
    {
        if (data.GetRowCount() is { } known)
        {
            return known;
        }

        long count = 0;
        using var cursor = data.GetRowCursor(Array.Empty<DataViewSchema.Column>());
        while (cursor.MoveNext())
        {
            count++;
        }

        return count;
    }

    /// <inheritdoc />
    public IEnumerable<ImageBatch> ReadEpoch(int epoch, int batchSize, CancellationToken cancellationToken)
    {
        if (batchSize <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(batchSize), batchSize, "The batch size must be positive.");
        }

        return ReadEpochCore(epoch, batchSize, cancellationToken);
    }

    private IEnumerable<ImageBatch> ReadEpochCore(int epoch, int batchSize, CancellationToken cancellationToken)
    {
        var channel = Channel.CreateBounded<ImageBatch>(new BoundedChannelOptions(ChannelCapacity)
        {
            SingleReader = true,
            SingleWriter = true,
            FullMode = BoundedChannelFullMode.Wait,
        });
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        Exception? failure = null;
        var producer = new Thread(() =>
        {
            try
            {
                Produce(epoch, batchSize, channel.Writer, stop.Token);
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                // The consumer stopped early or the user cancelled; the consumer reports it.
            }
            catch (Exception ex)
            {
                failure = ex;
            }
            finally
            {
                channel.Writer.TryComplete();
            }
        })
        {
            IsBackground = true,
            Name = $"BootMAE {_name} reader",
        };
        producer.Start();
        try
        {
            while (channel.Reader.WaitToReadAsync(cancellationToken).AsTask().GetAwaiter().GetResult())
            {
                while (channel.Reader.TryRead(out var batch))
                {
                    yield return batch;
                }
            }

            producer.Join();
            if (failure is not null)
            {
                ExceptionDispatchInfo.Capture(failure).Throw();
            }
        }
        finally
        {
            stop.Cancel();
            producer.Join();
        }
    }

    private DataViewRowCursor OpenCursor(int epoch)
    {
        var columns = new List<DataViewSchema.Column> { _data.Schema[_image.Index] };
        if (_label is { } label)
        {
            columns.Add(label);
        }

        if (_source is { } source)
        {
            columns.Add(source);
        }

        if (!_shuffle)
        {
            return ImageRowReader.OpenSequential(_data, columns);
        }

        int epochSeed = Seeds.Derive(_seed, epoch, stream: 4);
        if (_data.CanShuffle)
        {
            return ImageRowReader.OpenSequential(_data, columns, new Random(epochSeed));
        }

        // ML.NET's shuffle holds rows in a pool and drops columns it cannot cache, such as MLImage.
        var shuffled = new MLContext(epochSeed).Data.ShuffleRows(_data, epochSeed, _shufflePoolRows);
        if (columns.All(c => shuffled.Schema.GetColumnOrNull(c.Name) is { } s && s.Type.Equals(c.Type)))
        {
            return ImageRowReader.OpenSequential(shuffled, columns.Select(c => shuffled.Schema[c.Name]));
        }

        if (Interlocked.Exchange(ref _warnedNoShuffle, 1) == 0)
        {
            _log?.Warning($"The {_name} data cannot be shuffled with its '{_image.Name}' column ({_image.Kind}); rows are read in their stored order every epoch. " +
                "Use LoadRawImageBytes instead of LoadImages, or shuffle the rows before loading the images, for a new order each epoch.");
        }

        return ImageRowReader.OpenSequential(_data, columns);
    }

    private void Produce(int epoch, int batchSize, ChannelWriter<ImageBatch> writer, CancellationToken token)
    {
        Interlocked.Exchange(ref _badImages, 0);
        Interlocked.Exchange(ref _missingLabels, 0);
        using var cursor = OpenCursor(epoch);
        using var reader = new ImageRowReader(cursor, _image with { Index = cursor.Schema[_image.Name].Index },
            _source is null ? null : cursor.Schema[_source.Value.Name]);
        ValueGetter<uint>? labelGetter = _label is { } l ? cursor.GetGetter<uint>(cursor.Schema[l.Name]) : null;
        int size = _architecture.ImageSize, channels = _architecture.Channels;
        int per = ImageDecoder.PixelsPerImage(_architecture);
        var staging = new RawImage[batchSize];
        for (int i = 0; i < batchSize; i++)
        {
            staging[i] = new RawImage();
        }

        var labels = new int[batchSize];
        var errors = new string?[batchSize];
        var parallel = new ParallelOptions { CancellationToken = token, MaxDegreeOfParallelism = Environment.ProcessorCount };
        uint key = 0;
        bool more = true;
        while (more)
        {
            int n = 0;
            while (n < batchSize && (more = cursor.MoveNext()))
            {
                token.ThrowIfCancellationRequested();
                if (labelGetter is not null)
                {
                    labelGetter(ref key);
                    if (key == 0)
                    {
                        Interlocked.Increment(ref _missingLabels);
                        continue;
                    }

                    labels[n] = (int)key - 1;
                }

                reader.Read(staging[n]);
                n++;
            }

            if (n == 0)
            {
                break;
            }

            var pixels = new float[n * per];
            Parallel.For(0, n, parallel, i =>
            {
                errors[i] = null;
                var random = _augmentation is null ? null : ImageAugmentation.RandomFor(_seed, epoch, staging[i].Position);
                try
                {
                    ImageDecoder.Decode(staging[i], _image, size, channels, pixels.AsSpan(i * per, per), _augmentation, random, _maxImagePixels);
                }
                catch (InvalidDataException ex)
                {
                    errors[i] = ex.Message;
                }
            });

            int good = 0;
            for (int i = 0; i < n; i++)
            {
                if (errors[i] is { } error)
                {
                    if (!_skipBadImages)
                    {
                        throw new InvalidDataException($"BootMAE {_name} data: {error}");
                    }

                    Interlocked.Increment(ref _badImages);
                    continue;
                }

                if (good != i)
                {
                    Array.Copy(pixels, i * per, pixels, good * per, per);
                    labels[good] = labels[i];
                }

                good++;
            }

            if (good > 0)
            {
                var batchLabels = labelGetter is null ? null : labels.AsSpan(0, good).ToArray();
                writer.WriteAsync(new ImageBatch(pixels, good, batchLabels), token).AsTask().GetAwaiter().GetResult();
            }
        }

        if (epoch == 0 || BadImagesSkipped > 0 || MissingLabelsSkipped > 0)
        {
            ReportSkips(epoch);
        }
    }

    private void ReportSkips(int epoch)
    {
        if (MissingLabelsSkipped > 0)
        {
            _log?.Warning($"Epoch {epoch}: skipped {MissingLabelsSkipped} {_name} rows whose label '{_label?.Name}' is missing (key 0).");
        }

        if (BadImagesSkipped > 0)
        {
            _log?.Warning($"Epoch {epoch}: skipped {BadImagesSkipped} {_name} rows whose image in column '{_image.Name}' could not be decoded, was too large or held non-finite pixels (SkipBadImages).");
        }
    }
}
