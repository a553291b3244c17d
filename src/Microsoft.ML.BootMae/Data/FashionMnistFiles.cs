namespace Microsoft.ML.BootMae;

/// <summary>
/// What <see cref="FashionMnistSample.Materialize"/> wrote: two TSV files with the header <c>ImagePath&lt;TAB&gt;Label</c>
/// and one folder of 28 × 28 greyscale PNG files per split.
/// </summary>
/// <remarks>
/// <c>ImagePath</c> is relative to the TSV's folder, which is <see cref="Directory"/> (e.g. <c>train/00042.png</c>), so
/// pass <c>imageFolder: files.Directory</c> to <c>LoadImages</c> or <c>LoadRawImageBytes</c>. <c>Label</c> is the
/// class name, one of <see cref="ClassNames"/>.
/// </remarks>
/// <param name="Directory">Full path of the folder that holds both TSV files and both image folders.</param>
/// <param name="TrainTsvPath">Full path of <c>train.tsv</c>.</param>
/// <param name="TestTsvPath">Full path of <c>test.tsv</c>.</param>
/// <param name="TrainImageFolder">Full path of the folder of training PNG files (<c>train/</c>).</param>
/// <param name="TestImageFolder">Full path of the folder of test PNG files (<c>test/</c>).</param>
/// <param name="ClassNames">The ten class names, indexed by Fashion-MNIST label.</param>
/// <param name="TrainCount">Number of rows of <c>train.tsv</c>.</param>
/// <param name="TestCount">Number of rows of <c>test.tsv</c>.</param>
public sealed record FashionMnistFiles(
    string Directory,
    string TrainTsvPath,
    string TestTsvPath,
    string TrainImageFolder,
    string TestImageFolder,
    IReadOnlyList<string> ClassNames,
    int TrainCount,
    int TestCount);

/// <summary>Both splits of the embedded Fashion-MNIST subset as raw arrays.</summary>
/// <param name="Train">The training images (up to 1,000 per class).</param>
/// <param name="Test">The test images (up to 200 per class).</param>
/// <param name="ClassNames">The ten class names, indexed by label.</param>
public sealed record FashionMnistArrays(FashionMnistSplit Train, FashionMnistSplit Test, IReadOnlyList<string> ClassNames);
