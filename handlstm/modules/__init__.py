"""The nn.Modules: parameters under torch's names, init, the forward contract and the
layer/direction loop, over the engines. Conversion of one module to and from its torch twin
lives here too (:mod:`~handlstm.modules.conversion`): it needs nothing but the two modules.
"""
