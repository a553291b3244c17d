using System.Buffers.Binary;
using System.Collections.ObjectModel;
using System.IO.Compression;
using System.Text;
using SkiaSharp;

namespace Microsoft.ML.BootMae;

/// <summary>
/// The default data set of BootMAE: a class-balanced Fashion-MNIST subset (10,000 training and 2,000 test images,
/// 28 × 28 grey) embedded in this assembly, so samples, tests and notebooks need neither network nor extra packages.
/// </summary>
/// <remarks>
/// The subset holds the first 1,000 training and the first 200 test images of each class, in the order of the
/// original files. Fashion-MNIST is Copyright (c) 2017 Zalando SE and MIT-licensed; see <see cref="LicenseNotice"/>.
/// </remarks>
public static class FashionMnistSample
{
    /// <summary>Side of every image in pixels.</summary>
    public const int ImageSize = 28;

    /// <summary>Number of classes.</summary>
    public const int ClassCount = 10;

    /// <summary>Training images embedded per class (and the most <c>trainPerClass</c> may ask for).</summary>
    public const int TrainPerClass = 1000;

    /// <summary>Test images embedded per class (and the most <c>testPerClass</c> may ask for).</summary>
    public const int TestPerClass = 200;

    /// <summary>Name of the TSV column that holds the image path.</summary>
    public const string ImagePathColumn = "ImagePath";

    /// <summary>Name of the TSV column that holds the class name.</summary>
    public const string LabelColumn = "Label";

    private const string DataResource = "Microsoft.ML.BootMae.Data.FashionMnist.fashion-mnist-subset.bin.gz";
    private const string NoticeResource = "Microsoft.ML.BootMae.Data.FashionMnist.NOTICE.txt";
    private const int PixelsPerImage = ImageSize * ImageSize;

    private static readonly Lazy<(RawSplit Train, RawSplit Test)> Embedded = new(ReadEmbedded);

    /// <summary>The class names indexed by label: T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot.</summary>
    public static IReadOnlyList<string> ClassNames { get; } = new ReadOnlyCollection<string>(
    [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ]);

    /// <summary>Source and MIT licence text of the embedded data, which must accompany copies of it.</summary>
    public static string LicenseNotice
    {
        get
        {
            using var stream = OpenResource(NoticeResource);
            using var reader = new StreamReader(stream, Encoding.UTF8);
            return reader.ReadToEnd();
        }
    }

    /// <summary>
    /// Writes the embedded images as PNG files plus <c>train.tsv</c> and <c>test.tsv</c> under
    /// <paramref name="directory"/>, ready for <c>LoadFromTextFile</c> and <c>LoadImages</c>.
    /// </summary>
    /// <remarks>
    /// <para>Layout: <c>train.tsv</c>, <c>test.tsv</c>, <c>train/NNNNN.png</c>, <c>test/NNNNN.png</c>. Each TSV has the
    /// header <c>ImagePath&lt;TAB&gt;Label</c>; <c>ImagePath</c> is relative to the TSV's folder (use
    /// <c>imageFolder: result.Directory</c>) and <c>Label</c> is the class name. NNNNN is the image's position in the
    /// full embedded split (<see cref="FashionMnistSplit.Indices"/>), so a file always holds the same image whatever
    /// subset is asked for, and subsets can share a folder.</para>
    /// <para>PNG files are 8-bit greyscale. The call is idempotent: files already holding the right bytes are left
    /// alone, and it encodes in parallel (about a second for all 12,000 images). Files are replaced atomically, so
    /// concurrent calls on one folder are safe.</para>
    /// </remarks>
    /// <param name="directory">Folder to write into; created if missing.</param>
    /// <param name="trainPerClass">Training images per class, 0..1000; <c>null</c> means all 1,000.</param>
    /// <param name="testPerClass">Test images per class, 0..200; <c>null</c> means all 200.</param>
    /// <returns>The paths written and the class names.</returns>
    /// <exception cref="ArgumentException"><paramref name="directory"/> is null or blank.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A per-class count is outside its range.</exception>
    public static FashionMnistFiles Materialize(string directory, int? trainPerClass = null, int? testPerClass = null)
    {
        if (string.IsNullOrWhiteSpace(directory))
        {
            throw new ArgumentException("directory must name a folder to write the Fashion-MNIST files into.", nameof(directory));
        }

        var train = CheckPerClass(trainPerClass, TrainPerClass, nameof(trainPerClass));
        var test = CheckPerClass(testPerClass, TestPerClass, nameof(testPerClass));
        var root = Path.GetFullPath(directory);
        var (embeddedTrain, embeddedTest) = Embedded.Value;

        var trainCount = WriteSplit(root, "train", embeddedTrain, embeddedTrain.SelectBalanced(train));
        var testCount = WriteSplit(root, "test", embeddedTest, embeddedTest.SelectBalanced(test));
        return new FashionMnistFiles(
            root,
            Path.Combine(root, "train.tsv"),
            Path.Combine(root, "test.tsv"),
            Path.Combine(root, "train"),
            Path.Combine(root, "test"),
            ClassNames,
            trainCount,
            testCount);
    }

    /// <summary>
    /// Returns the embedded images as raw arrays without writing files, taking the first
    /// <paramref name="trainPerClass"/> / <paramref name="testPerClass"/> images of each class in embedded order.
    /// </summary>
    /// <param name="trainPerClass">Training images per class, 0..1000; <c>null</c> means all 1,000.</param>
    /// <param name="testPerClass">Test images per class, 0..200; <c>null</c> means all 200.</param>
    /// <returns>Fresh copies of both splits.</returns>
    /// <exception cref="ArgumentOutOfRangeException">A per-class count is outside its range.</exception>
    public static FashionMnistArrays LoadArrays(int? trainPerClass = null, int? testPerClass = null)
    {
        var train = CheckPerClass(trainPerClass, TrainPerClass, nameof(trainPerClass));
        var test = CheckPerClass(testPerClass, TestPerClass, nameof(testPerClass));
        var (embeddedTrain, embeddedTest) = Embedded.Value;
        return new FashionMnistArrays(
            embeddedTrain.Copy(embeddedTrain.SelectBalanced(train)),
            embeddedTest.Copy(embeddedTest.SelectBalanced(test)),
            ClassNames);
    }

    /// <summary>Encodes a 28 × 28 grey image as an 8-bit greyscale PNG.</summary>
    internal static unsafe byte[] EncodePng(ReadOnlySpan<byte> pixels)
    {
        using var bitmap = new SKBitmap(new SKImageInfo(ImageSize, ImageSize, SKColorType.Gray8, SKAlphaType.Opaque));
        var destination = bitmap.GetPixels();
        var rowBytes = bitmap.RowBytes;
        for (var y = 0; y < ImageSize; y++)
        {
            pixels.Slice(y * ImageSize, ImageSize).CopyTo(new Span<byte>((byte*)destination + (y * rowBytes), ImageSize));
        }

        using var data = bitmap.Encode(SKEncodedImageFormat.Png, 100)
            ?? throw new InvalidOperationException("SkiaSharp could not encode a PNG image.");
        return data.ToArray();
    }

    private static int CheckPerClass(int? value, int max, string name)
    {
        var perClass = value ?? max;
        if (perClass < 0 || perClass > max)
        {
            throw new ArgumentOutOfRangeException(name, value, $"{name} must be between 0 and {max} images per class.");
        }

        return perClass;
    }

    private static int WriteSplit(string root, string split, RawSplit data, int[] selected)
    {
        var folder = Path.Combine(root, split);
        Directory.CreateDirectory(folder);
        Parallel.For(0, selected.Length, i =>
        {
            var index = selected[i];
            var png = EncodePng(data.Pixels.AsSpan(index * PixelsPerImage, PixelsPerImage));
            WriteIfChanged(Path.Combine(folder, FileName(index)), png);
        });

        var tsv = new StringBuilder(32 * (selected.Length + 1));
        tsv.Append(ImagePathColumn).Append('\t').Append(LabelColumn).Append('\n');
        foreach (var index in selected)
        {
            // Forward slashes work with Path.Combine on every OS, so one TSV serves all.
            tsv.Append(split).Append('/').Append(FileName(index)).Append('\t').Append(ClassNames[data.Labels[index]]).Append('\n');
        }

        WriteIfChanged(Path.Combine(root, split + ".tsv"), Encoding.UTF8.GetBytes(tsv.ToString()));
        return selected.Length;
    }

    private static string FileName(int index) => index.ToString("D5", System.Globalization.CultureInfo.InvariantCulture) + ".png";

    private static void WriteIfChanged(string path, byte[] content)
    {
        var existing = new FileInfo(path);
        if (existing.Exists && existing.Length == content.Length && File.ReadAllBytes(path).AsSpan().SequenceEqual(content))
        {
            return;
        }

        // Written beside the target and renamed, so readers and concurrent writers never see a partial file; not flushed
        // to the disk (thousands of small files that Materialize makes again if a crash loses them).
        Persistence.DurableFiles.WriteAtomically(path, stream => stream.Write(content), durable: false);
    }

    private static Stream OpenResource(string name) =>
        typeof(FashionMnistSample).Assembly.GetManifestResourceStream(name)
        ?? throw new InvalidOperationException($"Embedded resource '{name}' is missing from {typeof(FashionMnistSample).Assembly.GetName().Name}.");

    private static (RawSplit Train, RawSplit Test) ReadEmbedded()
    {
        byte[] bytes;
        using (var gzip = new GZipStream(OpenResource(DataResource), CompressionMode.Decompress))
        using (var buffer = new MemoryStream(10_000_000))
        {
            gzip.CopyTo(buffer);
            bytes = buffer.ToArray();
        }

        var span = bytes.AsSpan();
        if (span.Length < 32 || !span[..8].SequenceEqual("BMFMNIST"u8))
        {
            throw new InvalidDataException("The embedded Fashion-MNIST resource has a bad header.");
        }

        var version = BinaryPrimitives.ReadInt32LittleEndian(span[8..]);
        var rows = BinaryPrimitives.ReadInt32LittleEndian(span[12..]);
        var cols = BinaryPrimitives.ReadInt32LittleEndian(span[16..]);
        var classes = BinaryPrimitives.ReadInt32LittleEndian(span[20..]);
        var trainCount = BinaryPrimitives.ReadInt32LittleEndian(span[24..]);
        var testCount = BinaryPrimitives.ReadInt32LittleEndian(span[28..]);
        if (version != 1 || rows != ImageSize || cols != ImageSize || classes != ClassCount
            || trainCount != TrainPerClass * ClassCount || testCount != TestPerClass * ClassCount)
        {
            throw new InvalidDataException(
                $"The embedded Fashion-MNIST resource is not the expected one (version {version}, {rows}x{cols}, {classes} classes, {trainCount}/{testCount} images).");
        }

        var offset = 32;
        var train = RawSplit.Read(bytes, ref offset, trainCount);
        var test = RawSplit.Read(bytes, ref offset, testCount);
        if (offset != bytes.Length)
        {
            throw new InvalidDataException("The embedded Fashion-MNIST resource has trailing bytes.");
        }

        return (train, test);
    }

    /// <summary>One embedded split, shared read-only by all callers.</summary>
    private sealed class RawSplit
    {
        private RawSplit(int[] sourceIndices, byte[] labels, byte[] pixels)
        {
            SourceIndices = sourceIndices;
            Labels = labels;
            Pixels = pixels;
        }

        public int[] SourceIndices { get; }

        public byte[] Labels { get; }

        public byte[] Pixels { get; }

        public static RawSplit Read(byte[] bytes, ref int offset, int count)
        {
            if (bytes.Length - offset < count * (2 + 1 + PixelsPerImage))
            {
                throw new InvalidDataException("The embedded Fashion-MNIST resource is truncated.");
            }

            var sources = new int[count];
            for (var i = 0; i < count; i++)
            {
                sources[i] = BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(offset + (2 * i)));
            }

            offset += 2 * count;
            var labels = bytes.AsSpan(offset, count).ToArray();
            offset += count;
            var pixels = bytes.AsSpan(offset, count * PixelsPerImage).ToArray();
            offset += count * PixelsPerImage;
            return new RawSplit(sources, labels, pixels);
        }

        /// <summary>Positions of the first <paramref name="perClass"/> images of each class, in embedded order.</summary>
        public int[] SelectBalanced(int perClass)
        {
            var taken = new int[ClassCount];
            var selected = new List<int>(perClass * ClassCount);
            for (var i = 0; i < Labels.Length && selected.Count < perClass * ClassCount; i++)
            {
                if (taken[Labels[i]] < perClass)
                {
                    taken[Labels[i]]++;
                    selected.Add(i);
                }
            }

            return [.. selected];
        }

        public FashionMnistSplit Copy(int[] selected)
        {
            var pixels = new byte[selected.Length * PixelsPerImage];
            var labels = new byte[selected.Length];
            var sources = new int[selected.Length];
            for (var i = 0; i < selected.Length; i++)
            {
                var index = selected[i];
                Pixels.AsSpan(index * PixelsPerImage, PixelsPerImage).CopyTo(pixels.AsSpan(i * PixelsPerImage));
                labels[i] = Labels[index];
                sources[i] = SourceIndices[index];
            }

            return new FashionMnistSplit(pixels, labels, (int[])selected.Clone(), sources);
        }
    }
}
