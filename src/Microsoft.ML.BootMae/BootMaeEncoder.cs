using Microsoft.ML.BootMae.Interop;
using Microsoft.ML.BootMae.Modules;
using Microsoft.ML.BootMae.Persistence;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae;

/// <summary>
/// A pretrained BootMAE (or MAE / ViT) encoder, independent of any pipeline: save it, load it, import official
/// PyTorch weights, export ours, and hand it to <c>BootMaeFeaturize</c> or <c>BootMaeImageClassification</c>.
/// </summary>
/// <remarks>
/// Input images are scaled to [0, 1] and then normalised per channel as <see cref="BootMaeArchitecture.Normalization"/>
/// says: mean = std = 0.5 (pixels in [-1, 1]) for BootMAE's own encoders, the ImageNet mean/std for imported MAE
/// weights. The encoder is the student of pretraining (the official fine-tuning also starts from the student, not the
/// EMA teacher). Dispose it to free its native memory.
/// <para>File format of <see cref="Save(Stream)"/>: the 8 bytes <c>BOOTMAE1</c>, a little-endian int32 header
/// length, a UTF-8 JSON header (format, architecture, payload length and SHA-256), then the weights as a
/// safetensors payload under the official key names (<c>patch_embed.proj.weight</c>, <c>blocks.0.attn.qkv.weight</c>, …).</para>
/// <para>BootMaeEncoder.Interop.cs holds the PyTorch import and the safetensors and ONNX exports.</para>
/// </remarks>
public sealed partial class BootMaeEncoder : IDisposable
{
    private const string FormatName = "bootmae-encoder";
    private const int FormatVersion = 1;
    private static readonly byte[] Magic = "BOOTMAE1"u8.ToArray();

    private readonly object _bf16Gate = new();
    private VisionTransformerEncoder? _bf16Module;
    private readonly DisposeGate _gate = new();

    internal BootMaeEncoder(VisionTransformerEncoder module, BootMaeArchitecture architecture)
    {
        Module = module;
        Architecture = architecture;
        Module.eval();
    }

    /// <summary>The network's shape.</summary>
    public BootMaeArchitecture Architecture { get; }

    /// <summary>Width D of the embeddings (<see cref="BootMaeArchitecture.EmbedDim"/>).</summary>
    public int EmbeddingDim => Architecture.EmbedDim;

    /// <summary>The device the weights live on.</summary>
    internal Device Device => Module.parameters().First().device;

    internal VisionTransformerEncoder Module { get; }

    /// <summary>Creates an encoder with the pretraining initialisation (a baseline without pretraining).</summary>
    /// <param name="architecture">The network's shape.</param>
    /// <param name="seed">Seed of the initialisation.</param>
    public static BootMaeEncoder CreateRandom(BootMaeArchitecture architecture, int seed)
    {
        ArgumentNullException.ThrowIfNull(architecture);
        architecture.Validate();
        BootMaeRuntime.EnsureTorchLoaded();
        var module = new VisionTransformerEncoder(architecture);
        using var generator = new Generator((ulong)seed);
        module.Initialize(generator);
        return new BootMaeEncoder(module, architecture);
    }

    /// <summary>Loads an encoder written by <see cref="Save(string)"/>.</summary>
    /// <param name="path">The file.</param>
    /// <exception cref="InvalidDataException">The file is not a BootMAE encoder, or is truncated or altered.</exception>
    public static BootMaeEncoder Load(string path)
    {
        using var stream = File.OpenRead(path);
        try
        {
            return Load(stream);
        }
        catch (InvalidDataException ex)
        {
            throw new InvalidDataException($"'{path}': {ex.Message}", ex);
        }
    }

    /// <summary>Loads an encoder written by <see cref="Save(Stream)"/>; reads exactly the encoder's bytes and leaves the stream open.</summary>
    /// <param name="stream">The stream, positioned at the encoder.</param>
    /// <exception cref="InvalidDataException">The data is not a BootMAE encoder, or is truncated or altered.</exception>
    public static BootMaeEncoder Load(Stream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        BootMaeRuntime.EnsureTorchLoaded();
        var header = WeightsContainer.ReadHeader<EncoderHeader>(stream, Magic, "encoder",
            "Save encoders with BootMaeEncoder.Save; import PyTorch weights with BootMaeEncoder.FromPyTorch.");
        if (header.Format != FormatName || header.Version != FormatVersion)
        {
            throw new InvalidDataException($"unsupported encoder format '{header.Format}' version {header.Version}; this package reads '{FormatName}' version {FormatVersion}.");
        }

        ValidateHeaderArchitecture(header.Architecture, "encoder");
        WeightsContainer.CheckPayloadHolds(header.PayloadLength, VisionTransformerEncoder.StateElementCount(header.Architecture), "encoder", Describe(header.Architecture));
        var weights = WeightsContainer.ReadWeights(stream, header.PayloadLength, header.PayloadSha256 ?? string.Empty, "encoder");
        var module = new VisionTransformerEncoder(header.Architecture);
        try
        {
            EncoderWeights.Load(module, weights, strict: true, source: "the encoder file");
            return new BootMaeEncoder(module, header.Architecture);
        }
        catch
        {
            module.Dispose();
            throw;
        }
        finally
        {
            DisposeAll(weights);
        }
    }

    /// <summary>Saves the encoder (architecture and weights) to a file, replacing it atomically.</summary>
    /// <param name="path">The file to write.</param>
    public void Save(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        WriteAtomically(path, Save);
    }

    /// <summary>Saves the encoder to a stream and leaves it open.</summary>
    /// <param name="stream">The stream to write to.</param>
    public void Save(Stream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        using var use = _gate.Enter(this);
        using var scope = NewDisposeScope();
        var (payload, length, sha256) = WeightsContainer.Serialize(Module.state_dict());
        WeightsContainer.Write(stream, Magic, new EncoderHeader(FormatName, FormatVersion, Architecture, length, sha256), payload);
    }

    /// <summary>Creates an independent copy (same weights, own memory).</summary>
    public BootMaeEncoder Clone()
    {
        using var use = _gate.Enter(this);
        return new BootMaeEncoder(EncoderWeights.Copy(Module, Architecture, "the source encoder").to(Device), Architecture);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        // Waits for Embed calls already running on other threads (a Transform); later ones throw ObjectDisposedException.
        if (!_gate.Close())
        {
            return;
        }

        Module.Dispose();
        _bf16Module?.Dispose();
    }

    /// <summary>
    /// Embeds <paramref name="count"/> images given as [count, C, H, W] floats in [0, 1]; returns count×D values
    /// (count×N×D for <see cref="BootMaePooling.Tokens"/>). Safe to call from several threads at once.
    /// </summary>
    internal float[] Embed(float[] pixels01, int count, BootMaePooling pooling, int sourceBlock, BootMaePrecision precision)
    {
        using var use = _gate.Enter(this);
        var a = Architecture;
        if (sourceBlock < 0 || sourceBlock >= a.Depth)
        {
            throw new ArgumentOutOfRangeException(nameof(sourceBlock), sourceBlock, $"SourceBlock must be in [0, {a.Depth - 1}] for this {a.Depth}-block encoder.");
        }

        using var scope = NewDisposeScope();
        using var mode = inference_mode();
        // Without fast bf16 (an AVX2-only CPU) libtorch's bf16 kernels are a slow generic fallback: use fp32, as documented.
        bool bf16 = precision != BootMaePrecision.Float32 && Training.TorchDevices.HasFastBFloat16(Device);
        var module = bf16 ? GetBFloat16Module() : Module;
        var input = InputNormalization.Input(pixels01, count, a, Device);
        if (bf16)
        {
            input = input.to(ScalarType.BFloat16);
        }

        var tokens = module.ForwardTokens(input, sourceBlock);
        var pooled = pooling switch
        {
            BootMaePooling.Cls => tokens[.., 0],
            BootMaePooling.Tokens => tokens[.., 1..],
            _ => tokens[.., 1..].mean(new long[] { 1 }),
        };
        return pooled.to(ScalarType.Float32).cpu().contiguous().data<float>().ToArray();
    }

    /// <summary>A file's architecture: present and consistent, or an <see cref="InvalidDataException"/> naming the field.</summary>
    internal static void ValidateHeaderArchitecture(BootMaeArchitecture? architecture, string what)
    {
        if (architecture is null)
        {
            throw new InvalidDataException($"the {what} header has no field 'Architecture': the file is damaged.");
        }

        try
        {
            architecture.Validate();
        }
        catch (ArgumentException ex)
        {
            throw new InvalidDataException($"the {what} header's field 'Architecture' is invalid ({ex.Message}): the file is damaged.", ex);
        }
    }

    /// <summary>The sizes that decide memory, for messages.</summary>
    internal static string Describe(BootMaeArchitecture a) =>
        $"ImageSize {a.ImageSize}, PatchSize {a.PatchSize}, Channels {a.Channels}, EmbedDim {a.EmbedDim}, Depth {a.Depth}, MlpRatio {a.MlpRatio}";

    private VisionTransformerEncoder GetBFloat16Module()
    {
        lock (_bf16Gate)
        {
            if (_bf16Module is null)
            {
                var copy = EncoderWeights.Copy(Module, Architecture, "the encoder");
                copy.to(Device).to(ScalarType.BFloat16).eval();
                _bf16Module = copy;
            }

            return _bf16Module;
        }
    }

    // Encoder files may go to a folder that does not exist yet.
    private static void WriteAtomically(string path, Action<Stream> write)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        DurableFiles.WriteAtomically(path, write);
    }

    private static void DisposeAll(Dictionary<string, Tensor> tensors)
    {
        foreach (var t in tensors.Values)
        {
            t.Dispose();
        }
    }


    private sealed record EncoderHeader(string Format, int Version, BootMaeArchitecture Architecture, long PayloadLength, string PayloadSha256);
}
