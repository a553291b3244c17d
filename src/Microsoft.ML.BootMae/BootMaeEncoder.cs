using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
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
/// </remarks>
public sealed class BootMaeEncoder : IDisposable
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

    /// <summary>
    /// Imports encoder weights saved by PyTorch with a known shape: see <see cref="FromPyTorch(string, BootMaePyTorchImportOptions?)"/>,
    /// which this calls with <see cref="BootMaePyTorchImportOptions.Architecture"/> = <paramref name="architecture"/>.
    /// </summary>
    /// <param name="path">The weights file. Nothing in it is executed: <c>.pth</c> files are read as data only.</param>
    /// <param name="architecture">The shape the weights were trained with (e.g. <see cref="BootMaeArchitecture.VitBase16"/>).
    /// Its <see cref="BootMaeArchitecture.Normalization"/> counts as a choice only when it is not the default.</param>
    /// <exception cref="InvalidDataException">Encoder weights are missing or have the wrong shape for <paramref name="architecture"/>.</exception>
    /// <exception cref="InvalidOperationException">The key names do not tell the input normalisation; pass it in the options.</exception>
    public static BootMaeEncoder FromPyTorch(string path, BootMaeArchitecture architecture)
    {
        ArgumentNullException.ThrowIfNull(architecture);
        return FromPyTorch(path, new BootMaePyTorchImportOptions { Architecture = architecture });
    }

    /// <summary>
    /// Imports encoder weights saved by PyTorch: an official BootMAE or MAE training checkpoint, a timm ViT, a Hugging Face
    /// <c>ViTMAEModel</c> / <c>ViTMAEForPreTraining</c> (or <c>ViTModel</c>), or weights exported by
    /// <see cref="ExportSafetensors"/>, as <c>.safetensors</c> or <c>.pth</c>/<c>.pt</c>/<c>.bin</c>.
    /// </summary>
    /// <param name="path">The weights file. Nothing in it is executed: <c>.pth</c> files are read as data only.</param>
    /// <param name="options">Architecture, which network of a checkpoint, normalisation, image size, log; <c>null</c> infers all from the file.</param>
    /// <remarks>
    /// <para><b>Checkpoints.</b> The weights may sit at the top level or under <c>model</c> / <c>state_dict</c> / <c>module</c>
    /// (the student), or <c>model_ema</c> (the teacher, with <see cref="BootMaeCheckpointModel.Teacher"/>); the other entries of
    /// an official checkpoint (<c>optimizer</c>, <c>scaler</c>, <c>epoch</c>, the <c>args</c> Namespace) are read as data and
    /// ignored. Keys may carry <c>module.</c>, <c>model.</c>, <c>encoder.</c>, <c>backbone.</c> or <c>vit.</c> prefixes.</para>
    /// <para><b>Names.</b> Decoder and head keys are ignored. A fused <c>attn.qkv.bias</c> (MAE, timm) becomes q_bias and v_bias,
    /// and Hugging Face's separate query / key / value weights one qkv weight; a key bias is dropped, which is exact: it adds
    /// the same amount to every logit of a query, which softmax ignores. <c>pos_embed</c> is taken from the file (MAE orders the
    /// sin-cos halves differently, timm's is learned) and resampled bicubically when the image size differs from its grid.</para>
    /// <para><b>Architecture.</b> When not given it is inferred from the shapes; heads, which shapes do not record, come from
    /// <see cref="BootMaePyTorchImportOptions.Heads"/> or the presets' rule. <b>Normalisation:</b> see
    /// <see cref="BootMaePyTorchImportOptions.Normalization"/>; it is stored in <see cref="Architecture"/> and applied everywhere.
    /// Every decision is reported through <see cref="BootMaePyTorchImportOptions.Log"/>.</para>
    /// </remarks>
    /// <exception cref="InvalidDataException">The file holds no usable encoder weights (the message says what it holds), or they do not fit the given architecture.</exception>
    /// <exception cref="InvalidOperationException">The key names do not tell the input normalisation; set <see cref="BootMaePyTorchImportOptions.Normalization"/>.</exception>
    public static BootMaeEncoder FromPyTorch(string path, BootMaePyTorchImportOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        options ??= new BootMaePyTorchImportOptions();
        if (!Enum.IsDefined(options.Model))
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.Model, "BootMaePyTorchImportOptions.Model must be Student or Teacher.");
        }

        if (options.Architecture is { } given)
        {
            given.Validate();
            if (options.ImageSize is { } size && size != given.ImageSize)
            {
                throw new ArgumentException($"BootMaePyTorchImportOptions.ImageSize {size} differs from Architecture.ImageSize {given.ImageSize}; set one of them.", nameof(options));
            }
        }

        options.Normalization?.Validate(options.Architecture?.Channels ?? 3);
        BootMaeRuntime.EnsureTorchLoaded();
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"PyTorch weights file '{path}' does not exist.", path);
        }

        var log = options.Log;
        var (raw, owned, args) = PyTorchWeights.Read(path, options.Model, log);
        try
        {
            // First the shape (no tensor leaves this scope), then the module outside any scope, since its parameters
            // must outlive it, then the weights mapped again (views, and one concatenation per block for HF names).
            BootMaeArchitecture architecture;
            using (var scope = NewDisposeScope())
            {
                var (weights, naming) = PyTorchWeights.ToEncoderKeys(raw);
                log?.Invoke($"FromPyTorch: '{path}' has {naming.Describe()}{(naming.HasNoQkvBias ? "; its attention has no qkv bias, so q_bias and v_bias are zero" : string.Empty)}.");
                var normalization = EncoderImport.ResolveNormalization(options, naming, args, path, log);
                architecture = options.Architecture is { } a
                    ? a with { Normalization = normalization }
                    : EncoderImport.Infer(weights, options, normalization, path, log);
                architecture.Validate();
            }

            var module = new VisionTransformerEncoder(architecture);
            try
            {
                using (var scope = NewDisposeScope())
                {
                    var (weights, _) = PyTorchWeights.ToEncoderKeys(raw);
                    EncoderImport.FitPositionTable(weights, architecture, path, log);
                    EncoderWeights.Load(module, weights, strict: true, source: $"'{path}'");
                }

                return new BootMaeEncoder(module, architecture);
            }
            catch
            {
                module.Dispose();
                throw;
            }
        }
        finally
        {
            owned.ForEach(t => t.Dispose());
        }
    }

    /// <summary>Writes the weights as <c>.safetensors</c> under the official key names, for PyTorch (<c>safetensors.torch.load_file</c>);
    /// the header's metadata records the input normalisation, which <see cref="FromPyTorch(string, BootMaePyTorchImportOptions?)"/> reads back.</summary>
    /// <param name="path">The file to write (replaced atomically).</param>
    public void ExportSafetensors(string path)
    {
        using var use = _gate.Enter(this);
        using var scope = NewDisposeScope();
        WriteAtomically(path, stream => Safetensors.Save(stream, Module.state_dict(), PyTorchWeights.TrainingArgs.ToMetadata(Architecture.Normalization)));
    }

    /// <summary>
    /// Writes the encoder as an ONNX model (opset 17, standard operators, float32) that gives what
    /// <c>BootMaeFeaturize</c> gives for the same settings, for ML.NET's <c>ApplyOnnxModel</c> or ONNX Runtime, with
    /// no TorchSharp or libtorch at serving time.
    /// </summary>
    /// <param name="path">The <c>.onnx</c> file to write, replaced atomically (a crash leaves the old file or the new one). Its folder must exist.</param>
    /// <param name="pooling">How the tokens become the output, as in <c>BootMaeFeaturize</c>.</param>
    /// <param name="sourceBlock">0-based block whose output (after the final LayerNorm) is pooled; <c>null</c> means the last block.</param>
    /// <remarks>
    /// Input <c>pixels</c>: float32 <c>[batch, 3, ImageSize, ImageSize]</c>, planar RGB with values 0..255, which is what
    /// <c>mlContext.Transforms.ExtractPixels</c> gives with its defaults; scaling, clamping, the grey conversion of a
    /// 1-channel encoder (BT.601 luma) and the architecture's input normalisation happen inside the graph. Output <c>features</c>:
    /// float32 <c>[batch, D]</c>, or <c>[batch, N, D]</c> for <see cref="BootMaePooling.Tokens"/>. The batch dimension
    /// is dynamic. The architecture, pooling and block are in the model's metadata (keys <c>bootmae.*</c>).
    /// </remarks>
    /// <exception cref="ObjectDisposedException">The encoder is disposed.</exception>
    /// <exception cref="DirectoryNotFoundException">The folder of <paramref name="path"/> does not exist.</exception>
    /// <exception cref="NotSupportedException">The weights are too large for a single-file ONNX model (2 GiB).</exception>
    public void ExportOnnx(string path, BootMaePooling pooling = BootMaePooling.Mean, int? sourceBlock = null)
    {
        if (_gate.IsClosed)
        {
            throw new ObjectDisposedException(nameof(BootMaeEncoder), "This BootMaeEncoder is disposed, so it has no weights left to export. Export it before disposing it, or load it again with BootMaeEncoder.Load.");
        }

        var full = OnnxExport.BootMaeOnnxExporter.ResolveTarget(path);
        if (!Enum.IsDefined(pooling))
        {
            throw new ArgumentOutOfRangeException(nameof(pooling), pooling, "Pooling must be Mean, Cls or Tokens.");
        }

        int block = sourceBlock ?? Architecture.Depth - 1;
        if (block < 0 || block >= Architecture.Depth)
        {
            throw new ArgumentOutOfRangeException(nameof(sourceBlock), sourceBlock, $"SourceBlock must be in [0, {Architecture.Depth - 1}] for this {Architecture.Depth}-block encoder.");
        }

        using var use = _gate.Enter(this);
        OnnxExport.BootMaeOnnxExporter.Write(OnnxExport.BootMaeOnnxExporter.BuildEncoder(Module, Architecture, pooling, block), full);
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

    /// <summary>Normalises [0, 1] pixels as <paramref name="architecture"/>'s weights expect (<see cref="BootMaeArchitecture.Normalization"/>).</summary>
    internal static Tensor Normalize(Tensor pixels01, BootMaeArchitecture architecture) => InputNormalization.Apply(pixels01, architecture.Normalization);

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
        bool bf16 = precision == BootMaePrecision.BFloat16 && Training.TorchDevices.HasFastBFloat16(Device);
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
