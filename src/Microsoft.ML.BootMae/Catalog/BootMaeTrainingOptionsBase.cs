namespace Microsoft.ML.BootMae;

/// <summary>
/// The ML.NET settings shared by the BootMAE trainers (pretraining and image classification): columns, data reading,
/// callbacks, and the seed and device that the MLContext can supply. The training run's own settings live in each trainer's
/// <c>Options.Training</c>; <see cref="MaxSteps"/>, <see cref="NumberOfThreads"/>, <see cref="ReturnModelOnCancellation"/>
/// and <see cref="LogEveryNSteps"/> read and write them there.
/// </summary>
public abstract class BootMaeTrainingOptionsBase
{
    /// <summary>Shared defaults.</summary>
    internal static class SharedDefaults
    {
        internal const string ImageColumnName = "Image";
        internal const int ShufflePoolSize = 1000;
        internal const long MaxImagePixels = DataViews.ImageDecoder.DefaultMaxImagePixels;
    }

    /// <summary>
    /// The image column: <c>VarVector&lt;Byte&gt;</c> from <c>LoadRawImageBytes</c> (preferred: BootMAE decodes and
    /// augments), <c>Image</c> from <c>LoadImages</c>, or <c>Vector&lt;Single, C, H, W&gt;</c> from <c>ExtractPixels</c> (never
    /// augmented). Images of any size are resized to <see cref="Architecture"/>'s. Default <c>"Image"</c>.
    /// </summary>
    public string ImageColumnName = SharedDefaults.ImageColumnName;

    /// <summary>
    /// Shape of the network. Default <c>null</c>: the encoder's architecture when one is given, otherwise
    /// <see cref="BootMaeArchitecture.VitBase16"/>.
    /// </summary>
    public BootMaeArchitecture? Architecture;

    /// <summary>Stops after this many optimizer steps (schedules span the shorter of this and the epochs). Default <c>null</c>: no cap.
    /// Reads and writes <c>Options.Training.MaxSteps</c>.</summary>
    public abstract long? MaxSteps { get; set; }

    /// <summary>
    /// Seed of weight initialisation, masking, shuffling and augmentation. Default <c>null</c>: the seed of the
    /// <see cref="MLContext"/> (<c>new MLContext(seed)</c>) where it can be read, otherwise 1.
    /// </summary>
    public int? Seed;

    /// <summary>
    /// Where to train. Default <see cref="BootMaeDevice.Auto"/>: the MLContext decides when its <c>GpuDeviceId</c> is
    /// set (that GPU, or see <see cref="FallbackToCpu"/>), otherwise CUDA when available, else the CPU.
    /// <see cref="BootMaeDevice.Cpu"/> and <see cref="BootMaeDevice.Cuda"/> override the MLContext.
    /// </summary>
    public BootMaeDevice Device = BootMaeDevice.Auto;

    /// <summary>
    /// When a GPU is requested (<see cref="BootMaeDevice.Cuda"/>, or <c>MLContext.GpuDeviceId</c> with
    /// <see cref="BootMaeDevice.Auto"/>) and none is usable: run on the CPU (true, logged) or throw
    /// <see cref="InvalidOperationException"/> (false). Default <c>null</c>: <c>MLContext.FallbackToCpu</c> when
    /// <c>MLContext.GpuDeviceId</c> is set (ML.NET reads the two together; <c>MLContext.FallbackToCpu</c> is
    /// <c>false</c> until set), otherwise <c>true</c>.
    /// </summary>
    public bool? FallbackToCpu;

    /// <summary>CUDA device index. Default <c>null</c>: <c>MLContext.GpuDeviceId</c> when set, otherwise 0.</summary>
    public int? GpuDeviceId;

    /// <summary>torch intra-op threads (process-wide). Default <c>null</c>: torch's default. Reads and writes <c>Options.Training.NumberOfThreads</c>.</summary>
    public abstract int? NumberOfThreads { get; set; }

    /// <summary>Stops training between steps. Default <see cref="CancellationToken.None"/>.</summary>
    public CancellationToken CancellationToken;

    /// <summary>On cancellation, return the model trained so far instead of throwing <see cref="OperationCanceledException"/>. Default <c>false</c>.
    /// Reads and writes <c>Options.Training.ReturnModelOnCancellation</c>.</summary>
    public abstract bool ReturnModelOnCancellation { get; set; }

    /// <summary>Receives progress every <see cref="LogEveryNSteps"/> steps and at each epoch end. Default <c>null</c>.</summary>
    public Action<BootMaeTrainingMetrics>? MetricsCallback;

    /// <summary>Receives every log line (they also go to <c>MLContext.Log</c>). Default <c>null</c>.</summary>
    public Action<string>? LogCallback;

    /// <summary>Steps between progress reports. Default 50. Reads and writes <c>Options.Training.LogEveryNSteps</c>.</summary>
    public abstract int LogEveryNSteps { get; set; }

    /// <summary>
    /// Skip rows whose image cannot be used, counting them in the log, instead of failing: undecodable or truncated
    /// files, images over <see cref="MaxImagePixels"/>, and pixel vectors holding NaN or ±Infinity. Default <c>false</c>.
    /// </summary>
    public bool SkipBadImages;

    /// <summary>
    /// Largest image, as width × height, that training reads. Encoded files are checked against it from their header
    /// (PNG IHDR, JPEG SOF, …) before any pixel memory is allocated, so a tiny file that declares a huge image (a
    /// decompression bomb) fails with a message naming the column, row and file, or is skipped with
    /// <see cref="SkipBadImages"/>. The fitted model's <c>Transform</c> applies the same cap (its <c>MaxImagePixels</c>
    /// property, kept by <c>SaveBootMae</c>). Default 50,000,000.
    /// </summary>
    public long MaxImagePixels = SharedDefaults.MaxImagePixels;

    /// <summary>Random resized crop and horizontal flip of training images (never of pixel vectors). Default <c>true</c>.</summary>
    public bool Augment = true;

    /// <summary>Rows ML.NET's shuffle holds when the training data cannot shuffle itself. Default 1000.</summary>
    public int ShufflePoolSize = SharedDefaults.ShufflePoolSize;

    /// <summary>Checks the ML.NET settings; the training settings check themselves (<c>Options.Training.Validate</c>).</summary>
    internal void ValidateCommon(int inferenceBatchSize)
    {
        if (string.IsNullOrWhiteSpace(ImageColumnName))
        {
            throw new ArgumentException("ImageColumnName must be set.", nameof(ImageColumnName));
        }

        if (inferenceBatchSize <= 0)
        {
            throw new ArgumentOutOfRangeException("InferenceBatchSize", inferenceBatchSize, "InferenceBatchSize must be positive.");
        }

        if (ShufflePoolSize <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(ShufflePoolSize), ShufflePoolSize, "ShufflePoolSize must be positive.");
        }

        DataViews.ImageDecoder.CheckMaxImagePixels(MaxImagePixels, nameof(MaxImagePixels));

        Architecture?.Validate();
    }
}
