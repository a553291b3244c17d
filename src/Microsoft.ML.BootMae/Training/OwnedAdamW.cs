using Microsoft.ML.BootMae.Modules;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Training;

/// <summary>
/// AdamW (decoupled weight decay) that owns every native object of its step: each number becomes a
/// <see cref="Scalar"/> under <c>using</c>, every temporary tensor is disposed, and the moment tensors live and die
/// with the optimizer.
/// </summary>
/// <remarks>
/// Why not TorchSharp's <c>optim.AdamW</c>: its 0.107 step turns nine numbers per parameter into Scalars implicitly
/// and leaves them to the finalizer, which can free one while libtorch reads it (TorchSharp #1496, see
/// <see cref="TorchScalars"/>). This is that step (amsgrad and maximize off) op for op, with the same scalar types
/// (doubles, the int 1 that its <c>add_(eps)</c> passes as alpha), so it is bit-identical to TorchSharp's AdamW
/// (<c>OwnedAdamWTests</c>). <see cref="Save"/> and <see cref="Load"/> write and read TorchSharp's AdamW
/// <c>save_state_dict</c> format byte for byte, so checkpoints written with TorchSharp's optimizer still resume.
/// </remarks>
internal sealed class OwnedAdamW : IDisposable
{
    // TorchSharp's OptimizerHelper.save_state_dict writes the optimizer's type name first and load_state_dict checks it.
    private const string FormatName = "AdamW";

    private readonly List<ParamGroup> _groups;

    // One per parameter, group by group in parameter order: the order of TorchSharp's state_dict().State.
    private readonly List<State> _states = new();
    private bool _disposed;

    public OwnedAdamW(IEnumerable<ParamGroup> groups)
    {
        _groups = groups.ToList();
        var seen = new HashSet<IntPtr>();
        foreach (var p in _groups.SelectMany(g => g.Parameters))
        {
            if (!seen.Add(p.Handle))
            {
                throw new ArgumentException("A parameter is in more than one group.", nameof(groups));
            }
        }

        try
        {
            foreach (var p in _groups.SelectMany(g => g.Parameters))
            {
                _states.Add(new State(p));
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>The groups, in order; schedulers set their <see cref="ParamGroup.LearningRate"/> before each step.</summary>
    public IReadOnlyList<ParamGroup> ParamGroups => _groups;

    /// <summary>Every optimized parameter, group by group.</summary>
    public IEnumerable<Parameter> Parameters => _groups.SelectMany(g => g.Parameters);

    /// <summary>Zeroes the gradients in place (as TorchSharp's optimizer <c>zero_grad</c>; a missing gradient stays missing).</summary>
    public void ZeroGrad()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);

        // The scope frees the extra wrapper that TorchSharp's zero_() returns (see OwnedTensors).
        using var scope = NewDisposeScope();
        foreach (var p in Parameters)
        {
            using var grad = p.grad;
            grad?.zero_();
        }
    }

    /// <summary>One AdamW update of every parameter that has a gradient.</summary>
    public void Step()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        int index = 0;
        foreach (var group in _groups)
        {
            double lr = group.LearningRate;
            using var decay = (1 - lr * group.WeightDecay).ToScalar();
            using var beta1 = group.Beta1.ToScalar();
            using var gradWeight = (1 - group.Beta1).ToScalar();
            using var beta2 = group.Beta2.ToScalar();
            using var squareWeight = (1 - group.Beta2).ToScalar();
            using var eps = group.Epsilon.ToScalar();
            foreach (var param in group.Parameters)
            {
                var state = _states[index++];
                using var grad = param.grad;
                if (grad is null)
                {
                    continue;
                }

                state.Step += 1;
                param.mul_(decay);
                double biasCorrection1 = 1 - Math.Pow(group.Beta1, state.Step);
                double biasCorrection2 = 1 - Math.Pow(group.Beta2, state.Step);
                state.ExpAvg.mul_(beta1).add_(grad, gradWeight);
                state.ExpAvgSq.mul_(beta2).addcmul_(grad, grad, squareWeight);

                using var rootCorrection = Math.Sqrt(biasCorrection2).ToScalar();
                using var root = state.ExpAvgSq.sqrt();
                using var denom = root.div(rootCorrection);
                denom.add_(eps, TorchScalars.One);
                using var negativeStepSize = (-(lr / biasCorrection1)).ToScalar();
                param.addcdiv_(state.ExpAvg, denom, negativeStepSize);
            }
        }
    }

    /// <summary>Writes the state in TorchSharp's AdamW <c>save_state_dict</c> format.</summary>
    public void Save(BinaryWriter writer)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        writer.Write(FormatName);
        WriteLength(writer, _groups.Count);
        WriteLength(writer, _states.Count);
        foreach (var g in _groups)
        {
            writer.Write(g.InitialLearningRate);
            writer.Write(g.LearningRate);
            writer.Write(g.Beta1);
            writer.Write(g.Beta2);
            writer.Write(g.Epsilon);
            writer.Write(g.WeightDecay);
            writer.Write(false); // amsgrad
            writer.Write(false); // maximize
        }

        foreach (var s in _states)
        {
            writer.Write(s.Step);
            s.ExpAvg.Save(writer);
            s.ExpAvgSq.Save(writer);
            writer.Write(false); // no max_exp_avg_sq (amsgrad off)
        }
    }

    /// <summary>
    /// Reads state written by <see cref="Save"/> or TorchSharp's AdamW <c>save_state_dict</c>. The groups' learning rates
    /// are taken from it, as TorchSharp does; the other hyperparameters must match (they come from the same settings).
    /// All or nothing: on an error the optimizer is unchanged.
    /// </summary>
    public void Load(BinaryReader reader)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        string name = reader.ReadString();
        if (name != FormatName)
        {
            throw new InvalidDataException($"The optimizer state is of '{name}', not {FormatName}.");
        }

        long groups = reader.Read7BitEncodedInt64(), states = reader.Read7BitEncodedInt64();
        if (groups != _groups.Count || states != _states.Count)
        {
            throw new InvalidDataException($"The optimizer state has {groups} groups and {states} parameters; this optimizer has {_groups.Count} and {_states.Count}.");
        }

        var rates = new (double Initial, double Current)[_groups.Count];
        for (int i = 0; i < _groups.Count; i++)
        {
            var g = _groups[i];
            rates[i] = (reader.ReadDouble(), reader.ReadDouble());
            var (beta1, beta2, eps, weightDecay) = (reader.ReadDouble(), reader.ReadDouble(), reader.ReadDouble(), reader.ReadDouble());
            bool amsgrad = reader.ReadBoolean(), maximize = reader.ReadBoolean();
            if (beta1 != g.Beta1 || beta2 != g.Beta2 || eps != g.Epsilon || weightDecay != g.WeightDecay || amsgrad || maximize)
            {
                throw new InvalidDataException($"Optimizer group {i} was saved with betas ({beta1}, {beta2}), eps {eps}, weight decay {weightDecay}" +
                    $"{(amsgrad ? ", amsgrad" : "")}{(maximize ? ", maximize" : "")}; this one has ({g.Beta1}, {g.Beta2}), {g.Epsilon}, {g.WeightDecay}.");
            }
        }

        // Read into fresh tensors and swap them in only when everything has been read.
        var loaded = new List<(long Step, Tensor ExpAvg, Tensor ExpAvgSq)>(_states.Count);
        try
        {
            foreach (var s in _states)
            {
                var state = (Step: reader.ReadInt64(), ExpAvg: zeros_like(s.ExpAvg).DetachFromDisposeScope(), ExpAvgSq: zeros_like(s.ExpAvgSq).DetachFromDisposeScope());
                loaded.Add(state);

                // TorchSharp's tensor format; Load checks the dtype and shape against the parameter's.
                state.ExpAvg.Load(reader);
                state.ExpAvgSq.Load(reader);
                if (reader.ReadBoolean())
                {
                    throw new InvalidDataException("The optimizer state was saved with amsgrad, which this optimizer does not use.");
                }
            }
        }
        catch (ArgumentException ex)
        {
            // Tensor.Load's dtype or shape mismatch: another model's state.
            DisposeAll(loaded);
            throw new InvalidDataException("The optimizer state does not fit this optimizer's parameters: " + ex.Message, ex);
        }
        catch
        {
            DisposeAll(loaded);
            throw;
        }

        for (int i = 0; i < _groups.Count; i++)
        {
            (_groups[i].InitialLearningRate, _groups[i].LearningRate) = rates[i];
        }

        for (int i = 0; i < _states.Count; i++)
        {
            _states[i].Replace(loaded[i].Step, loaded[i].ExpAvg, loaded[i].ExpAvgSq);
        }
    }

    /// <summary>
    /// The groups' weight decays recorded in state written by <see cref="Save"/>, read without building an optimizer (an
    /// exporter needs them to build the optimizer that <see cref="Load"/> then accepts).
    /// </summary>
    public static IReadOnlyList<double> ReadWeightDecays(BinaryReader reader)
    {
        string name = reader.ReadString();
        if (name != FormatName)
        {
            throw new InvalidDataException($"The optimizer state is of '{name}', not {FormatName}.");
        }

        long groups = reader.Read7BitEncodedInt64();
        reader.Read7BitEncodedInt64();
        if (groups is < 0 or > 1024)
        {
            throw new InvalidDataException($"The optimizer state claims {groups} parameter groups (damaged).");
        }

        var decays = new List<double>((int)groups);
        for (long i = 0; i < groups; i++)
        {
            reader.ReadDouble(); // initial lr
            reader.ReadDouble(); // lr
            reader.ReadDouble(); // beta1
            reader.ReadDouble(); // beta2
            reader.ReadDouble(); // eps
            decays.Add(reader.ReadDouble());
            reader.ReadBoolean();
            reader.ReadBoolean();
        }

        return decays;
    }

    /// <summary>
    /// Replaces one parameter's step count and moments by copies of the given values (converted to the state's dtype and
    /// device); shapes must match. Used by checkpoint imports.
    /// </summary>
    internal void SetState(int index, long step, Tensor expAvg, Tensor expAvgSq)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var state = _states[index];
        if (!expAvg.shape.SequenceEqual(state.ExpAvg.shape) || !expAvgSq.shape.SequenceEqual(state.ExpAvgSq.shape))
        {
            throw new InvalidDataException($"Optimizer moments of shape [{string.Join(", ", expAvg.shape)}] do not fit a parameter of shape [{string.Join(", ", state.ExpAvg.shape)}].");
        }

        using var noGrad = no_grad();
        using var scope = NewDisposeScope(); // frees the wrappers copy_ returns
        state.ExpAvg.copy_(expAvg);
        state.ExpAvgSq.copy_(expAvgSq);
        state.Step = step;
    }

    /// <summary>The step count and moments of one parameter, for tests (live tensors, not copies).</summary>
    internal (long Step, Tensor ExpAvg, Tensor ExpAvgSq) StateOf(int index) => (_states[index].Step, _states[index].ExpAvg, _states[index].ExpAvgSq);

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        foreach (var s in _states)
        {
            s.Dispose();
        }
    }

    private static void DisposeAll(List<(long Step, Tensor ExpAvg, Tensor ExpAvgSq)> states)
        => states.ForEach(s => { s.ExpAvg.Dispose(); s.ExpAvgSq.Dispose(); });

    // TorchSharp's LEB128 length, which for non-negative values is BinaryWriter's 7-bit encoding.
    private static void WriteLength(BinaryWriter writer, int value) => writer.Write7BitEncodedInt64(value);

    /// <summary>One parameter group: its parameters and hyperparameters; only the learning rate changes during training.</summary>
    internal sealed class ParamGroup
    {
        public ParamGroup(IEnumerable<Parameter> parameters, double learningRate, double weightDecay, double beta1, double beta2, double epsilon)
        {
            // TorchSharp's AdamW checks.
            if (learningRate < 0)
            {
                throw new ArgumentOutOfRangeException(nameof(learningRate), learningRate, "The learning rate cannot be negative.");
            }

            if (epsilon < 0)
            {
                throw new ArgumentOutOfRangeException(nameof(epsilon), epsilon, "Epsilon cannot be negative.");
            }

            if (beta1 is < 0 or >= 1 || beta2 is < 0 or >= 1)
            {
                throw new ArgumentOutOfRangeException(nameof(beta1), (beta1, beta2), "The betas must be in [0, 1).");
            }

            if (weightDecay < 0)
            {
                throw new ArgumentOutOfRangeException(nameof(weightDecay), weightDecay, "The weight decay cannot be negative.");
            }

            Parameters = parameters.ToList();
            LearningRate = InitialLearningRate = learningRate;
            WeightDecay = weightDecay;
            Beta1 = beta1;
            Beta2 = beta2;
            Epsilon = epsilon;
        }

        public IReadOnlyList<Parameter> Parameters { get; }

        public double LearningRate { get; set; }

        /// <summary>The learning rate the group was created with (saved, as TorchSharp does, but not used by the step).</summary>
        public double InitialLearningRate { get; internal set; }

        public double WeightDecay { get; }

        public double Beta1 { get; }

        public double Beta2 { get; }

        public double Epsilon { get; }
    }

    private sealed class State : IDisposable
    {
        public State(Parameter parameter)
        {
            // Zeros like the parameter (dtype and device), outside any caller's dispose scope: the optimizer owns them.
            ExpAvg = zeros_like(parameter).DetachFromDisposeScope();
            ExpAvgSq = zeros_like(parameter).DetachFromDisposeScope();
        }

        public long Step { get; set; }

        public Tensor ExpAvg { get; private set; }

        public Tensor ExpAvgSq { get; private set; }

        public void Replace(long step, Tensor expAvg, Tensor expAvgSq)
        {
            ExpAvg.Dispose();
            ExpAvgSq.Dispose();
            (Step, ExpAvg, ExpAvgSq) = (step, expAvg, expAvgSq);
        }

        public void Dispose()
        {
            ExpAvg.Dispose();
            ExpAvgSq.Dispose();
        }
    }
}
